"""The family contract, checked when a model is built (never after training), and discrete
latents summed out for any family: Pyro's own VAE example pasted into a family, a label-reading
family with its own names, a Gaussian-mixture VAE with no guide, the enumerated sum against
Pyro's TraceEnum_ELBO, one training ELBO on every engine, figures that never fail a run."""

import json
import math
import shutil
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch import nn

import pyrovae
from pyrovae import Batch, Model, TrainConfig
from pyrovae.app.cli import main
from pyrovae.infer.algorithms import build_algorithm
from pyrovae.models.m2 import M2

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "examples" / "plugins"
FAST = ["--set", "train.progress=false", "--set", "train.eval_every=100"]
pytestmark = pytest.mark.filterwarnings("ignore::pyrovae.PosteriorCollapseWarning")  # runs of an epoch or two


def one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def pyro_vae(tmp_path):
    """Pyro's examples/vae/vae.py family (examples/plugins/pyro_vae.py) and its config, copied."""
    shutil.copytree(PLUGINS, tmp_path / "plugins")
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "examples" / "configs" / "pyro_vae_digits.toml", tmp_path / "configs")
    return tmp_path


def test_pyros_own_vae_trains_evaluates_samples_draws_its_figures_and_resumes(pyro_vae, capsys):
    config, run = pyro_vae / "configs" / "pyro_vae_digits.toml", pyro_vae / "run"
    plugin = pyro_vae / "plugins" / "pyro_vae.py"
    assert main(["train", str(config), "--out", str(run), "--set", "train.epochs=2", *FAST]) == 0
    assert {"reconstructions.png", "samples.png", "elbo.png"} <= {p.name for p in run.iterdir()}
    assert main(["evaluate", str(run), "--plugins", str(plugin), "--nll-samples", "20", "--iwae-samples", "5"]) == 0
    scores = json.loads((run / "evaluation.json").read_text())
    assert scores["test_elbo"] <= scores["test_iwae"] + 0.5 and scores["test_elbo"] < 0
    assert main(["sample", str(run), "--plugins", str(plugin), "--out", str(pyro_vae / "s.png")]) == 0
    assert main(["train", "--out", str(run), "--resume", "--plugins", str(plugin), "--set", "train.epochs=3",
                 *FAST]) == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    model = pyrovae.load(run, plugins=[str(plugin)])
    assert model.observed_name() == "obs" and model.sample(4).shape == (4, 1, 8, 8)


def test_pyros_unsubsampled_plate_is_one_line_at_build_and_leaves_no_folder(pyro_vae, capsys):
    plugin = pyro_vae / "plugins" / "pyro_vae.py"
    plugin.write_text(plugin.read_text().replace("self.data_plate(batch, num_data)", 'pyro.plate("data", x.shape[0])'))
    run = pyro_vae / "run"
    code = main(["train", str(pyro_vae / "configs" / "pyro_vae_digits.toml"), "--out", str(run), *FAST])
    one_line_error(capsys, code, "site 'latent' is under pyro.plate('data') of size 2", "self.data_plate(batch, "
                   "num_data)")
    assert not run.exists()


class OwnNames(Model):
    """Reads labels; keeps its class count as ``n_labels`` and its observed site as ``pixels``."""

    def __init__(self, event_shape, num_classes: int, latent_dim: int = 2):
        super().__init__(event_shape)
        self.n_labels, self.latent_dim = num_classes, latent_dim
        d = math.prod(event_shape)
        self.enc = nn.Linear(d + num_classes, 2 * latent_dim)
        self.dec = nn.Linear(latent_dim + num_classes, d)

    def model(self, batch, num_data=None):
        x, y = batch.x.reshape(len(batch), -1), nn.functional.one_hot(batch.y, self.n_labels).float()
        with self.data_plate(batch, num_data):
            z = pyro.sample("code", dist.Normal(x.new_zeros(len(batch), self.latent_dim), 1.0).to_event(1))
            zy = torch.cat([z, y.expand(*z.shape[:-1], -1)], -1)  # z may carry a particle dimension
            pyro.sample("pixels", dist.Bernoulli(logits=self.dec(zy)).to_event(1), obs=x)

    def guide(self, batch, num_data=None):
        x, y = batch.x.reshape(len(batch), -1), nn.functional.one_hot(batch.y, self.n_labels).float()
        loc, log_scale = self.enc(torch.cat([x, y], -1)).chunk(2, -1)
        with self.data_plate(batch, num_data):
            pyro.sample("code", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_a_label_reading_family_with_its_own_names_trains_samples_and_draws(tmp_path, capsys):
    pyrovae.MODELS.register("own_names")(OwnNames)
    run = tmp_path / "run"
    assert main(["train", "--set", "model.family=own_names", "--set", "model.latent_dim=2", "--set",
                 "train.epochs=1", "--out", str(run), *FAST]) == 0
    assert "not drawn" not in capsys.readouterr().err  # every figure drawn, with labels
    model = pyrovae.load(run)
    assert model.num_classes == 10 and model.observed_name() == "pixels"
    assert model.sample(5, y=3).shape == (5, 1, 8, 8)
    assert main(["sample", str(run), "--out", str(tmp_path / "s.png")]) == 0


def test_a_gaussian_mixture_vae_with_no_guide_trains_evaluates_and_clusters_better_than_chance(tmp_path):
    shutil.copytree(PLUGINS, tmp_path / "plugins")
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "examples" / "configs" / "gmvae_digits.toml", tmp_path / "configs")
    run, plugin = tmp_path / "run", tmp_path / "plugins" / "gmvae.py"
    config = tmp_path / "configs" / "gmvae_digits.toml"
    assert main(["train", str(config), "--out", str(run), "--set", "train.epochs=30", *FAST]) == 0
    assert main(["evaluate", str(run), "--plugins", str(plugin), "--nll-samples", "500"]) == 0
    scores = json.loads((run / "evaluation.json").read_text())
    assert scores["test_elbo"] <= scores["test_iwae"] <= -scores["test_nll"] + 0.05, scores
    model, data = pyrovae.load(run, plugins=[str(plugin)]), pyrovae.load_dataset("digits")
    clusters, labels = model.cluster(data.test_batch), data.test_y

    def purity(y):  # the share of points in their cluster's most common label
        return sum(int(torch.bincount(y[clusters == k]).max()) for k in clusters.unique()) / len(y)

    chance = [purity(labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(s))])
              for s in range(20)]
    assert purity(labels) > max(chance) + 0.05, (purity(labels), max(chance))


class Clusters(Model):
    """y enumerated in the model only, z | y, x | z (the Gaussian mixture's shape, small)."""

    plate_nesting = 1

    def __init__(self):
        super().__init__((5,))
        self.means = nn.Parameter(torch.randn(3, 2))
        self.dec = nn.Linear(2, 5)
        self.enc = nn.Linear(5, 4)

    def model(self, batch, num_data=None):
        with self.data_plate(batch, num_data):
            y = pyro.sample("y", dist.Categorical(logits=torch.tensor([0.2, -0.3, 0.1])),
                            infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(self.means[y], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.dec(z), 1.0).to_event(1), obs=batch.x)

    def guide(self, batch, num_data=None):
        loc, log_scale = self.enc(batch.x).chunk(2, -1)
        with self.data_plate(batch, num_data):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


class GuideClusters(Clusters):
    """y enumerated in model and guide alike (q(y | x) q(z | x, y), as Pyro's ss_vae_M2.py)."""

    def __init__(self):
        super().__init__()
        self.classify = nn.Linear(5, 3)
        self.enc_y = nn.Linear(5 + 3, 4)

    def guide(self, batch, num_data=None):
        with self.data_plate(batch, num_data):
            y = pyro.sample("y", dist.Categorical(logits=self.classify(batch.x)), infer={"enumerate": "parallel"})
            shape = torch.broadcast_shapes(y.shape, (len(batch),))  # y enumerated: (3, 1, 1)
            xy = torch.cat([batch.x.expand(*shape, 5), nn.functional.one_hot(y, 3).float().expand(*shape, 3)], -1)
            loc, log_scale = self.enc_y(xy).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


@pytest.mark.parametrize("family", [Clusters, GuideClusters])
def test_the_enumerated_terms_are_what_trace_enum_elbo_computes_in_value_and_gradient(family):
    model, batch, n = family(), Batch(torch.randn(6, 5)), 60
    params = list(model.parameters())
    pyro.set_rng_seed(4)
    terms = model.terms(batch, 3, n, kl=False)
    ours = terms.elbo.mean(0).sum() * n / 6  # the minibatch's ELBO, scaled to the N points
    ours_grad = torch.autograd.grad(ours, params, allow_unused=True)
    pyro.set_rng_seed(4)
    elbo = TraceEnum_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    theirs = -elbo.differentiable_loss(model.model, model.guide, batch, n)
    theirs_grad = torch.autograd.grad(theirs, params, allow_unused=True)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    for a, b in zip(ours_grad, theirs_grad):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (terms.elbo.mean(0) <= torch.logsumexp(terms.log_weights, 0) - math.log(3) + 1e-5).all()
    torch.testing.assert_close(terms.elbo, terms.reconstruction + terms.log_prior - terms.log_q)


def test_the_importance_weights_sum_the_cluster_out_inside_each_weight():
    """log w = log sum_y p(x, y, z) - log q(z | x), written out by hand at the same z."""
    model, x = Clusters(), torch.randn(4, 5)
    pyro.set_rng_seed(1)
    terms = model.terms(Batch(x), 2, kl=False)
    pyro.set_rng_seed(1)
    loc, log_scale = model.enc(x).chunk(2, -1)
    q = dist.Normal(loc, log_scale.exp()).to_event(1)
    z = q.rsample((2,))  # the guide's draw, (L, M, 2)
    prior_y = torch.log_softmax(torch.tensor([0.2, -0.3, 0.1]), -1)
    p_z = dist.Normal(model.means, 1.0).to_event(1).log_prob(z.unsqueeze(-2)) + prior_y  # (L, M, 3)
    log_px_z = dist.Normal(model.dec(z), 1.0).to_event(1).log_prob(x)
    by_hand = torch.logsumexp(p_z, -1) + log_px_z - q.log_prob(z)
    torch.testing.assert_close(terms.log_weights, by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms.reconstruction, log_px_z, rtol=1e-5, atol=1e-5)


def test_m2s_closed_form_is_a_fast_path_of_the_enumerated_sum():
    """M2.terms (the closed-form sum over classes) against the general path on M2's own Pyro
    program (y enumerated in its guide), at the same z for every class: value and gradient."""
    model = M2((1, 8, 8), 10, latent_dim=3)
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.3))
    batch, params = Batch(x), list(model.parameters())
    eps = torch.randn(2, 5, 3)
    fast = model.terms(batch, 2, 50, kl=False, noise=eps)
    loc, log_var = model._encode_every_class(x)  # (C, M, D) each
    z = loc.unsqueeze(1) + eps.unsqueeze(0) * torch.exp(0.5 * log_var).unsqueeze(1)  # (C, L, M, D): y's dim first
    slow = Model.terms(model, batch, 2, 50, kl=False, values={"z": z})
    for name in ("reconstruction", "log_prior", "log_q", "log_weights", "elbo"):
        a, b = getattr(fast, name), getattr(slow, name)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)
    grads = [torch.autograd.grad(t.elbo.sum(), params, allow_unused=True) for t in (fast, slow)]
    for a, b in zip(*grads):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


class GlobalScale(Model):
    """A global latent (a scale shared by every point) beside a local one."""

    plate_nesting = 1

    def __init__(self):
        super().__init__((4,))
        self.enc = nn.Linear(4, 4)

    def model(self, batch, num_data=None):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with self.data_plate(batch, num_data):
            z = pyro.sample("z", dist.Normal(batch.x.new_zeros(len(batch), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(torch.cat([z, z], -1), s.unsqueeze(-1)).to_event(1), obs=batch.x)

    def guide(self, batch, num_data=None):
        pyro.sample("s", dist.LogNormal(pyro.param("s_loc", torch.tensor(0.3)), 0.2))
        loc, log_scale = self.enc(batch.x).chunk(2, -1)
        with self.data_plate(batch, num_data):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def test_a_global_latent_reports_one_training_elbo_on_every_engine():
    """The reported training ELBO shares the global site over the N points on the torch engine,
    the pyro engine (beta != 1, and iwae) and wake-sleep alike, for the same batch and noise."""
    model, batch, n = GlobalScale(), Batch(torch.randn(8, 4)), 800
    estimators = {}
    for label, options in [("torch", {"estimator": "mc"}), ("pyro beta", {"estimator": "mc", "engine": "pyro",
                                                                           "beta": 0.5}),
                           ("torch iwae", {"estimator": "iwae", "num_particles": 1}),
                           ("pyro iwae", {"estimator": "iwae", "engine": "pyro", "num_particles": 1}),
                           ("wake_sleep", {"estimator": "mc", "algorithm": "wake_sleep"})]:
        cfg = TrainConfig(**options)
        algorithm = build_algorithm(model, cfg, cfg.estimator, n)
        algorithm.dry_run(batch)
        pyro.set_rng_seed(11)
        step = algorithm.loss(batch, None, cfg.beta, len(batch))
        estimators[label] = float(step.elbo_sum)
    assert len({round(v, 4) for v in estimators.values()}) == 1, estimators
    # and it is the per-datapoint share: the global site counts 1/N per point, not 1/M
    pyro.set_rng_seed(11)
    local_share = -pyrovae.elbo_per_datapoint(model, batch, analytic_kl=False, num_data=8).sum().item()
    assert abs(local_share - estimators["torch"]) > 1e-3


def test_the_pyro_engine_trains_a_plugin_family_with_every_estimator_it_allows(tmp_path):
    pyrovae.MODELS.register("own_names")(OwnNames)
    for estimator in ("auto", "analytic", "mc", "iwae"):
        run = tmp_path / estimator
        assert main(["train", "--set", "model.family=own_names", "--set", "train.engine=pyro", "--set",
                     f"train.estimator={estimator}", "--set", "train.epochs=1", "--out", str(run), *FAST]) == 0


def test_the_pyro_engine_sums_an_enumerated_site_with_trace_enum_elbo(tmp_path, capsys):
    shutil.copytree(PLUGINS, tmp_path / "plugins")
    shutil.copy(ROOT / "examples" / "configs" / "gmvae_digits.toml", tmp_path / "gmvae_digits.toml")
    text = (tmp_path / "gmvae_digits.toml").read_text().replace("../plugins", "plugins")
    (tmp_path / "gmvae_digits.toml").write_text(text)
    assert main(["train", str(tmp_path / "gmvae_digits.toml"), "--out", str(tmp_path / "run"), "--set",
                 "train.engine=pyro", "--set", "train.epochs=1", *FAST]) == 0
    code = main(["train", str(tmp_path / "gmvae_digits.toml"), "--out", str(tmp_path / "run2"), "--set",
                 "train.engine=pyro", "--set", "train.estimator=analytic", "--set", "train.epochs=1", *FAST])
    one_line_error(capsys, code, "train.estimator = 'analytic'")


def test_a_guide_site_the_model_lacks_is_one_line_at_build(capsys):
    class Misspelt(GlobalScale):
        def guide(self, batch, num_data=None):
            pyro.sample("s", dist.LogNormal(pyro.param("s_loc", torch.tensor(0.3)), 0.2))
            loc, log_scale = self.enc(batch.x).chunk(2, -1)
            with self.data_plate(batch, num_data):
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
                pyro.sample("zz", dist.Normal(batch.x.new_zeros(len(batch)), 1.0))

    with pytest.raises(pyrovae.ConfigError, match=r"the guide samples .*zz.*, which the model does not"):
        Misspelt().dry_run(Batch(torch.randn(3, 4)), 10)


def test_two_observed_sites_are_one_line_unless_one_is_declared():
    class TwoObserved(Model):
        def model(self, batch, num_data=None):
            with self.data_plate(batch, num_data):
                z = pyro.sample("z", dist.Normal(batch.x.new_zeros(len(batch), 4), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=batch.x)
                pyro.sample("x_again", dist.Normal(z, 2.0).to_event(1), obs=batch.x)

    batch = Batch(torch.randn(3, 4))
    with pytest.raises(pyrovae.ConfigError, match="2 observed sites under the plate 'data' .x, x_again.; declare"):
        TwoObserved((4,)).dry_run(batch, 10)
    declared = type("Declared", (TwoObserved,), {"observed_site": "x_again"})((4,))
    declared.dry_run(batch, 10)
    assert declared.observed_name() == "x_again" and declared.sample(2).shape == (2, 4)


def test_a_figure_that_cannot_be_drawn_is_a_warning_and_the_run_is_complete(tmp_path, capsys, monkeypatch):
    def broken(self, *args, **kwargs):
        raise KeyError("x")

    monkeypatch.setattr(pyrovae.VAE, "sample", broken)
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"samples.png: not drawn \(KeyError"):
        assert main(["train", "--set", "train.epochs=1", "--out", str(run), *FAST]) == 0
    assert (run / "checkpoint.pt").is_file() and (run / "reconstructions.png").is_file()
    with pytest.warns(UserWarning, match="samples.png: not drawn"):  # the lock was released: --resume opens it
        assert main(["train", "--out", str(run), "--resume", "--set", "train.epochs=2", *FAST]) == 0


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_that_blocks_out(tmp_path, capsys, monkeypatch):
    from pyrovae.training.loop import Trainer

    original = Trainer.epoch
    monkeypatch.setattr(Trainer, "epoch", lambda self, epoch, bar: (_ for _ in ()).throw(RuntimeError("boom")))
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        pyrovae.train(pyrovae.load_config(None, ["train.epochs=1", "train.progress=false"]), run)
    assert not run.exists()
    monkeypatch.setattr(Trainer, "epoch", original)
    assert main(["train", "--set", "train.epochs=1", "--out", str(run), *FAST]) == 0


def test_a_family_built_in_python_records_its_classes_and_its_guide_reads_labels():
    class NoGuideLabels(Model):
        def __init__(self, event_shape, num_classes, latent_dim=2):
            super().__init__(event_shape)
            self.k, self.latent_dim = num_classes, latent_dim
            self.dec = nn.Linear(latent_dim + num_classes, 4)

        def model(self, batch, num_data=None):
            with self.data_plate(batch, num_data):
                z = pyro.sample("z", dist.Normal(batch.x.new_zeros(len(batch), self.latent_dim), 1.0).to_event(1))
                y = nn.functional.one_hot(batch.y, self.k).float().expand(*z.shape[:-1], -1)
                pyro.sample("x", dist.Normal(self.dec(torch.cat([z, y], -1)), 1.0).to_event(1), obs=batch.x)

    model = NoGuideLabels((4,), 3)
    assert model.num_classes == 3 and model.amortized_guide.num_classes == 3  # the guide reads one-hot labels
    assert model.sample(6).shape == (6, 4)  # labels 0, 1, 2, 0, ... drawn for
    with pytest.raises(pyrovae.ConfigError, match="num_classes = 5, but it was built for 3 classes"):
        type("Clash", (NoGuideLabels,), {"__init__": lambda self, event_shape, num_classes: (
            NoGuideLabels.__init__(self, event_shape, num_classes), setattr(self, "num_classes", 5))[0]})((4,), 3)
