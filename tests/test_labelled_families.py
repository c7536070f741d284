"""The families that read labels: ``cvae`` (conditional) and ``m2`` (semi-supervised).

Each fast path is tied to the general one: the cvae's closed forms to the terms read off its
Pyro traces, M2's closed-form sum over the classes to Pyro's TraceEnum_ELBO on its program.
"""

import json
import math

import pyro
import pytest
import torch

import pyrovae
from pyrovae import CVAE, M2, Batch, Model
from pyrovae.app.checkpoint import read_checkpoint
from pyrovae.app.cli import main
from pyrovae.data.sampling import epoch_plan
from pyrovae.infer.estimators import get_estimator


def _labelled(m=6, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.rand((m, d), generator=g), torch.randint(0, 10, (m,), generator=g))


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
def test_cvae_closed_forms_match_its_traces_in_value_and_gradient(encoder):
    torch.manual_seed(0)
    model = CVAE((1, 8, 8), num_classes=10, latent_dim=3, likelihood="continuous_bernoulli", encoder=encoder)
    b = _labelled()
    batch = Batch(b.x.reshape(-1, 1, 8, 8), b.y)
    eps = torch.randn(4, 6, 3)
    loc, log_var = model.encoder(model.encoder_input(batch.x, model.condition(batch)))
    z = loc + eps * torch.exp(0.5 * log_var)
    fast = model.terms(batch, 4, 100, kl=True, noise=eps)
    general = Model.terms(model, batch, 4, 100, kl=True, values={"z": z})
    torch.testing.assert_close(fast.reconstruction, general.reconstruction)
    torch.testing.assert_close(fast.kl.expand(4, 6), general.kl)
    grads = [torch.autograd.grad((t.reconstruction - t.kl).sum(), model.decoder.parameters(), retain_graph=True)
             for t in (fast, general)]
    for a, b_ in zip(*grads):
        torch.testing.assert_close(a, b_)


def test_cvae_conditions_on_the_label():
    torch.manual_seed(0)
    model = CVAE((64,), num_classes=10, latent_dim=2, likelihood="continuous_bernoulli")
    b = _labelled()
    other = Batch(b.x, (b.y + 1) % 10)
    assert not torch.allclose(model.terms(b, 1, noise=torch.zeros(1, 6, 2)).reconstruction,
                              model.terms(other, 1, noise=torch.zeros(1, 6, 2)).reconstruction)
    assert model.sample(5, y=3).shape == (5, 64)
    with pytest.raises(ValueError, match="labels must be in"):
        model.sample(2, y=10)
    with pytest.raises(ValueError, match="needs the labels"):
        model.terms(Batch(b.x), 1)
    with pytest.raises(ValueError, match="reads no labels"):
        pyrovae.VAE((64,)).sample(2, y=1)


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")  # a labelled batch has none
def test_m2_closed_form_sum_matches_trace_enum_elbo():
    """The closed-form sum over the classes (pyrovae's loop) and Pyro's TraceEnum_ELBO on the m2
    program estimate the same objective, for an unlabelled and a labelled minibatch."""
    torch.manual_seed(0)
    model = M2((64,), num_classes=10, latent_dim=2, likelihood="continuous_bernoulli")
    model.num_labeled.fill_(20.0)  # alpha N / N_l = 0.1 * 100 / 20 per labelled point
    b = _labelled()
    elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, num_particles=3000, vectorize_particles=True)
    for batch in (Batch(b.x), b):
        with torch.no_grad():
            pyro_loss = elbo.loss(model.model, model.guide, batch, 100)
            terms = model.terms(batch, 3000, 100)
            objective, _ = get_estimator("analytic")(terms)
        ours = -float(objective.sum()) * 100 / 6
        assert abs(pyro_loss - ours) < 0.01 * abs(ours) + 2.0, (pyro_loss, ours)
    assert terms.auxiliary is not None and float(terms.auxiliary.abs().sum()) > 0


def test_m2_bounds_and_scores_without_labels():
    torch.manual_seed(0)
    model = M2((64,), num_classes=10, latent_dim=2, likelihood="continuous_bernoulli")
    b = _labelled(m=8)
    mixed = Batch(b.x, b.y, torch.tensor([1, 0, 1, 0, 0, 0, 1, 0], dtype=torch.bool))
    with torch.no_grad():
        t = model.terms(mixed, 2000, 100, kl=False)
        elbo = t.elbo.mean(0)
        iwae = torch.logsumexp(t.log_weights, 0) - math.log(2000)
        analytic = model.terms(mixed, 2000, 100, kl=True)
    assert (elbo <= iwae + 1e-4).all()
    torch.testing.assert_close(analytic.reconstruction.mean(0) - analytic.kl.mean(0), elbo, atol=0.15, rtol=0)
    assert t.auxiliary[~mixed.labeled].eq(0).all() and t.auxiliary[mixed.labeled].lt(0).all()
    assert model.scoring_batch(b).y is None  # test scores bound log p(x)
    assert pyrovae.evaluate(model, b, nll_samples=20, iwae_samples=5, elbo_particles=2)["test_accuracy"] == \
        float((model.classify(b) == b.y).float().mean())


def test_m2_learns_a_classifier_from_few_labels():
    data = pyrovae.load_dataset("digits", labeled=100)
    torch.manual_seed(0)
    model = M2(data.event_shape, num_classes=10, latent_dim=8)
    metrics = pyrovae.fit(model, data, epochs=12, progress=False, eval_every=12)
    assert model.num_labeled == 100
    assert metrics[-1]["test_accuracy"] > 0.6  # chance is 0.1


def test_m2_under_a_label_budget_defaults_to_labelled_points_in_every_minibatch_and_the_balanced_weight():
    config = pyrovae.load_config(None, ["model.family=m2", "data.labeled=100"])
    assert (config.train.labeled_per_batch, config.train.labeled_weight) == (50, "balanced")
    assert config.data.binarize == "threshold"  # fixed images for the classifier, not a fresh draw each step
    assert pyrovae.load_config(None, ["model.family=m2", "data.labeled=100", "data.binarize=dynamic"]
                               ).data.binarize == "dynamic"  # what the user sets stays
    assert pyrovae.load_config(None, ["model.family=m2", "data.labeled=100", "data.name=frey_face"]
                               ).data.binarize is None  # only a dynamic default is replaced
    assert pyrovae.load_config(None, ["model.family=m2"]).data.binarize is None
    assert pyrovae.load_config(None, ["model.family=m2", "data.labeled=100", "train.batch_size=40"]
                               ).train.labeled_per_batch == 20  # at most half the minibatch
    given = pyrovae.load_config(None, ["model.family=m2", "data.labeled=100", "train.labeled_per_batch=0",
                                       "train.labeled_weight=1.0"]).train
    assert (given.labeled_per_batch, given.labeled_weight) == (0, 1.0)  # what the user sets stays
    for sets in (["model.family=m2"], ["model.family=cvae", "data.labeled=100"], ["data.labeled=100"]):
        train = pyrovae.load_config(None, sets).train
        assert (train.labeled_per_batch, train.labeled_weight) == (0, 1.0), sets
    # fit() from Python alike: the plan draws 50 labelled points into each minibatch of 100
    data = pyrovae.load_dataset("digits", labeled=100)
    model = M2(data.event_shape, num_classes=10, latent_dim=2, encoder={"name": "mlp", "hidden": [16]},
               decoder={"name": "mlp", "hidden": [16]}, classifier={"name": "mlp", "hidden": [16]})
    metrics = pyrovae.fit(model, data, epochs=1, progress=False)
    assert metrics[-1]["step"] == math.ceil(data.num_train / 50)


def test_cli_sample_label_and_per_class_grid(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--set", "model.family=cvae", "--set", "train.epochs=1", "--out", str(run), "-q"]) == 0
    assert (run / "samples.png").exists() and not (run / "manifold.png").exists()
    out = tmp_path / "three.png"
    assert main(["sample", str(run), "--label", "3", "-n", "4", "-o", str(out)]) == 0 and out.exists()
    capsys.readouterr()
    assert main(["sample", str(run), "--label", "10", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--label 10" in err and "[0, 10)" in err
    vae_run = tmp_path / "vae"
    assert main(["train", "--set", "train.epochs=1", "--out", str(vae_run), "-q"]) == 0
    capsys.readouterr()
    assert main(["sample", str(vae_run), "--label", "1", "-o", str(out)]) == 2
    assert "reads no labels" in capsys.readouterr().err


def test_stratified_minibatches_estimate_the_full_data_sum():
    """train.labeled_per_batch: every epoch covers each point once (labelled ones through the
    labelled draws), and the weighted sums estimate sum_i f_i without bias."""
    n, m, k = 300, 40, 8
    labeled = torch.zeros(n, dtype=torch.bool)
    labeled[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:12]] = True
    f = torch.linspace(-1.0, 3.0, n) ** 2
    totals = []
    for epoch in range(1, 401):
        steps = epoch_plan(n, m, seed=0, epoch=epoch, labeled=labeled, labeled_per_batch=k)
        assert sum(s.size for s in steps) == n and all(s.index.numel() == s.size + k for s in steps)
        unlabelled_part = torch.cat([s.index[:s.size] for s in steps])
        assert sorted(unlabelled_part.tolist()) == list(range(n))
        assert all(labeled[s.index[s.size:]].all() for s in steps)
        totals.append(sum(float((s.weight * f[s.index]).sum()) for s in steps))
    totals = torch.tensor(totals)
    assert abs(float(totals.mean()) - float(f.sum())) < 4 * float(totals.std()) / 20 + 1e-6
    # labeled_weight = w counts each labelled point w times, with or without labelled draws
    target = float(f[~labeled].sum() + 3.0 * f[labeled].sum())
    for k_ in (0, k):
        weighted = torch.tensor([sum(float((s.weight * f[s.index]).sum())
                                     for s in epoch_plan(n, m, 0, epoch, labeled, k_, labeled_weight=3.0))
                                 for epoch in range(1, 201)])
        assert abs(float(weighted.mean()) - target) < 4 * float(weighted.std()) / 200 ** 0.5 + 1e-4
    # with no budget, the plain permutation in chunks of M
    plain = epoch_plan(n, m, seed=0, epoch=1)
    assert [s.weight for s in plain] == [None] * len(plain) and plain[0].size == m


@pytest.mark.filterwarnings("ignore::pyrovae.PosteriorCollapseWarning")
def test_stratified_m2_resumes_bit_for_bit_and_bad_settings_are_refused(tmp_path):
    sets = ["model.family=m2", "data.labeled=50", "train.labeled_per_batch=10", "train.labeled_weight=balanced",
            "train.progress=false",
            "train.eval_every=3"]
    first = pyrovae.train(pyrovae.load_config(None, sets + ["train.epochs=2"]), tmp_path / "a")
    pyrovae.train(pyrovae.load_config(None, sets + ["train.epochs=3"]), first, resume=True)
    straight = pyrovae.train(pyrovae.load_config(None, sets + ["train.epochs=3"]), tmp_path / "b")
    a, b = read_checkpoint(first / "checkpoint.pt"), read_checkpoint(straight / "checkpoint.pt")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    metrics = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 3 * math.ceil(len(pyrovae.load_dataset("digits").train) / 90)
    for bad, match in ((["train.labeled_per_batch=100"], "less than train.batch_size"),
                       (["train.engine=pyro"], "engine 'torch'"),
                       (["train.algorithm=wake_sleep", "model.family=vae"], "no train.labeled_per_batch"),
                       (["train.labeled_weight=0"], "a number > 0 or 'balanced'"),
                       (["train.labeled_weight='even'"], "a number > 0 or 'balanced'")):
        with pytest.raises(pyrovae.ConfigError, match=match):
            pyrovae.load_config(None, sets + bad)
    with pytest.raises(pyrovae.ConfigError, match="need a label budget"):  # before any run folder exists
        pyrovae.load_config(None, ["model.family=m2", "train.labeled_per_batch=10", "train.epochs=1"])
    with pytest.raises(pyrovae.ConfigError, match="need a label budget"):  # and from Python, before training
        pyrovae.fit(M2((1, 8, 8), 10), pyrovae.load_dataset("digits"), epochs=1, labeled_weight=2.0)


def test_m2_under_the_pyro_engine_with_a_label_budget_trains_on_minibatches_of_one_kind(tmp_path):
    """Its Pyro program takes all-labelled or all-unlabelled minibatches (Pyro's ss_vae_M2): under
    the Pyro engine the built-in m2 takes its labels per minibatch, TraceEnum_ELBO chosen from
    both kinds, the labelled minibatches balanced with the rest (its default under a budget), and
    its classifier learns from the labels."""
    sets = ["model.family=m2", "data.labeled=100", "train.engine=pyro", "train.epochs=3", "train.progress=false",
            "train.eval_every=3"]
    config = pyrovae.load_config(None, sets)
    assert config.train.labeled_weight == "balanced" and config.train.labeled_per_batch == 0
    run = pyrovae.train(config, tmp_path / "run")
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["test_accuracy"] > 0.5  # 100 labels of 10 classes: chance is 0.1



@pytest.mark.parametrize("family, reads", [("vae", False), ("hvae", False), ("cvae", True), ("m2", True)])
def test_labels_that_reach_nothing_are_one_line(tmp_path, capsys, family, reads):
    """A label budget on a family whose terms do not change with the labels is refused when the run
    is built; one that reads them trains."""
    from conftest import one_line_error

    args = ["train", "--set", f"model.family={family}", "--set", "data.labeled=100", "--set", "train.epochs=1",
            "--set", "train.batch_size=200", "-q", "--out", str(tmp_path / "run")]
    if reads:
        assert main(args) == 0, capsys.readouterr().err
    else:
        one_line_error(capsys, main(args), f"data.labeled = 100: model ({family.upper()}) reads no labels")
        assert not (tmp_path / "run").exists()


def test_fit_from_python_gives_m2_under_the_pyro_engine_the_settings_of_that_engine():
    """pyrovae.fit fills a family's settings under a budget for the engine it runs (no labelled
    points inside a minibatch, which Pyro's ELBOs cannot weigh)."""
    data = pyrovae.load_dataset("digits", labeled=100, binarize="threshold")
    metrics = pyrovae.fit(M2((1, 8, 8), 10, latent_dim=2), data, epochs=1, engine="pyro", progress=False,
                          eval_every=1)
    assert len(metrics) == 1 and metrics[0]["test_accuracy"] is not None
