"""The model interface: terms read off traces, each family's closed forms tied to them in value
and gradient, families by name, labels in batches, a user's own family end to end."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import binary_batch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn

import pyrovae
from pyrovae import MODELS, VAE, Batch, ConfigError, Model, Terms, fit, load_dataset
from pyrovae.app.cli import main


def trace_terms(model, batch, particles, kl, z):
    """The general path (Model.terms, from traces) at given latent values."""
    return Model.terms(model, batch, particles, kl=kl, values={"z": z})


@pytest.mark.parametrize("prior, likelihood, particles", [
    ("standard_normal", "bernoulli", 1), ("gaussian", {"name": "gaussian", "learn_scale": True}, 3),
    ({"name": "mixture", "num_components": 3}, "continuous_bernoulli", 2), ("flow", "bernoulli", 2),
    ({"name": "vamp", "num_pseudo_inputs": 4}, "bernoulli", 1),
    ("standard_normal", {"name": "negative_binomial", "library": "observed"}, 2),
    ("gaussian", "zero_inflated_negative_binomial", 1),
])
@pytest.mark.parametrize("kl", [True, False])
def test_the_vae_closed_forms_equal_the_trace_derived_terms(prior, likelihood, particles, kl):
    vae = VAE((1, 8, 8), 3, prior=prior, likelihood=likelihood)
    x = binary_batch(6)
    eps = torch.randn(particles, 6, 3)
    loc, log_var = vae.encoder(x)
    z = loc + eps * torch.exp(0.5 * log_var)
    fast, slow = vae.terms(x, particles, kl=kl, noise=eps), trace_terms(vae, x, particles, kl, z)
    names = ["reconstruction"] + (["kl"] if kl else ["log_prior", "log_q"])
    for name in names:
        a, b = getattr(fast, name), getattr(slow, name)
        torch.testing.assert_close(a.expand(particles, 6), b, rtol=1e-5, atol=1e-4, msg=name)
    assert fast.kl_exact == slow.kl_exact or not kl
    params = [p for p in vae.parameters() if p.requires_grad]
    for name in names:
        ga = torch.autograd.grad(getattr(fast, name).mean(0).sum(), params, retain_graph=True, allow_unused=True)
        gb = torch.autograd.grad(getattr(slow, name).mean(0).sum(), params, retain_graph=True, allow_unused=True)
        for p, a, b in zip(params, ga, gb):
            if a is None or b is None:
                assert (a is None or not a.abs().sum()) and (b is None or not b.abs().sum()), name
                continue
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)


def test_trace_terms_match_pyros_elbos_with_minibatch_scaling():
    """(N/M) times the minibatch sum of the trace-derived terms is Pyro's loss."""
    vae = VAE((1, 8, 8), 2, prior={"name": "mixture", "num_components": 2})
    x = binary_batch(8)
    pyro.set_rng_seed(4)
    terms = Model.terms(vae, x, 1, num_data=80)
    mc = -10 * float(terms.log_weights.mean(0).sum().detach())
    pyro.set_rng_seed(4)
    assert Trace_ELBO().loss(vae.model, vae.guide, x, 80) == pytest.approx(mc, rel=1e-5)


class TwoLayer(Model):
    """z2 ~ N(0, I), z1 | z2 ~ N(W z2, I), x | z1 ~ Bernoulli(decoder(z1)); a global scale s
    outside the data plate; q(z1 | x), q(z2 | z1)."""

    def __init__(self, event_shape, d1: int = 3, d2: int = 2):
        super().__init__(event_shape)
        size = math.prod(event_shape)
        self.d1, self.d2 = d1, d2
        self.enc1 = nn.Linear(size, 2 * d1)
        self.enc2 = nn.Linear(d1, 2 * d2)
        self.link = nn.Linear(d2, d1)
        self.dec = nn.Linear(d1, size)
        self.s_loc = nn.Parameter(torch.zeros(()))

    def model(self, batch, num_data=None):
        x = batch.x.flatten(1) if isinstance(batch, Batch) else batch.flatten(1)
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with self.data_plate(x, num_data):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(self.d2), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(self.link(z2), s.unsqueeze(-1)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.dec(z1)).to_event(1), obs=x)

    def guide(self, batch, num_data=None):
        x = batch.x.flatten(1) if isinstance(batch, Batch) else batch.flatten(1)
        pyro.sample("s", dist.LogNormal(self.s_loc, 0.1))
        with self.data_plate(x, num_data):
            loc1, raw1 = self.enc1(x).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(loc1, nn.functional.softplus(raw1) + 1e-3).to_event(1))
            loc2, raw2 = self.enc2(z1).chunk(2, -1)
            pyro.sample("z2", dist.Normal(loc2, nn.functional.softplus(raw2) + 1e-3).to_event(1))


def test_a_global_site_counts_one_nth_per_datapoint():
    model = TwoLayer((1, 8, 8))
    x = binary_batch(5)
    pyro.set_rng_seed(1)
    terms = Model.terms(model, x, 4, num_data=50, kl=True)
    assert terms.reconstruction.shape == (4, 5) and terms.log_prior.shape == (4, 5)
    pyro.set_rng_seed(1)
    model_trace, guide_trace = model.traces(x, 4, 50)
    s_prior = model_trace.nodes["s"]["unscaled_log_prob"].reshape(4)
    z_prior = sum(model_trace.nodes[n]["unscaled_log_prob"].reshape(4, 5) for n in ("z1", "z2"))
    torch.testing.assert_close(terms.log_prior, z_prior + s_prior.unsqueeze(-1) / 50)
    # the minibatch estimate (N/M) sum_i ELBO_i is Pyro's: the global term enters once
    pyro.set_rng_seed(2)
    pyro_loss = Trace_ELBO(num_particles=1).loss(model.model, model.guide, x, 50)
    pyro.set_rng_seed(2)
    ours = -10 * float(Model.terms(model, x, 1, num_data=50).log_weights.sum().detach())
    assert pyro_loss == pytest.approx(ours, rel=1e-5)
    # torch has KL(LogNormal || LogNormal) and Normal against Normal, but z1's prior depends on z2,
    # which the guide samples after z1: z1 takes log q - log p (the closed form there would be biased)
    assert not terms.kl_exact


def test_a_users_family_trains_and_evaluates_through_the_interface():
    data = load_dataset("digits", binarize="threshold")
    pyro.set_rng_seed(0)
    model = TwoLayer(data.event_shape)
    metrics = fit(model, data, epochs=3, batch_size=100, estimator="mc", num_particles=2, progress=False,
                  optim={"name": "adam", "lr": 3e-3})
    assert metrics[-1]["train_elbo"] > metrics[0]["train_elbo"]
    result = pyrovae.evaluate(model, data.test_batch, nll_samples=100, iwae_samples=10, elbo_particles=5)
    assert result["test_elbo"] < result["test_iwae"] <= -result["test_nll"] + 0.5
    assert result["latent_dim"] == 5 and result["kl_per_dim"] is None  # z1 (3) and z2 (2); s is global
    assert model.sample(4).shape == (4, 1, 8, 8) and model.reconstruct(data.test_batch[:3]).shape == (3, 1, 8, 8)


def test_the_analytic_estimator_of_a_generic_model_is_pyros_mean_field_elbo():
    """KL in closed form for each site where torch has one; Pyro's TraceMeanField_ELBO does the same."""
    vae = VAE((1, 8, 8), 3)
    x = binary_batch(6)
    pyro.set_rng_seed(3)
    terms = Model.terms(vae, x, 1, num_data=60)
    ours = -10 * float(pyrovae.infer.estimators.get_estimator("analytic")(terms)[0].sum().detach())
    pyro.set_rng_seed(3)
    assert TraceMeanField_ELBO().loss(vae.model, vae.guide, x, 60) == pytest.approx(ours, rel=1e-5)


# -- families by name ---------------------------------------------------------------------------
def test_the_vae_family_is_the_default_and_records_itself(tmp_path):
    config = pyrovae.load_config(None, ["train.epochs=1", "train.progress=false"])
    assert config.model.family == "vae" and config.to_dict()["model"]["family"] == "vae"
    assert config.to_dict()["model"]["latent_dim"] == 2
    run = pyrovae.train(config, tmp_path / "run")
    assert 'family = "vae"' in (run / "config.toml").read_text()
    assert isinstance(pyrovae.load(run), VAE)


@pytest.mark.parametrize("override, pattern", [
    ("model.family=nope", "model.family: unknown model family 'nope'"),
    ("model.colour=3", "model.colour: unknown option of model family 'vae'"),
    ("model.latent_dim=x", "model.latent_dim = 'x': expected an integer"),
])
def test_family_options_are_checked_in_one_line(override, pattern, capsys, tmp_path):
    assert main(["train", "--set", override, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert pattern in err and err.count("\n") == 1, err


def test_a_network_with_the_wrong_output_shape_is_one_line():
    class Wrong(nn.Module):
        def forward(self, z):
            return z.sum(-1)

    with pytest.raises(ConfigError, match=r"model.decoder: .* returns \(2, 2\); expected \(2, 2, 1, 1, 8, 8\)"):
        VAE((1, 8, 8), 3, decoder=Wrong())


# -- labels -------------------------------------------------------------------------------------
def test_digits_have_labels_and_batches_carry_them():
    data = load_dataset("digits")
    assert data.num_classes == 10 and data.train_y.shape == (data.num_train,)
    batch = data.train_batch(torch.tensor([0, 5, 7]))
    torch.testing.assert_close(batch.y, data.train_y[[0, 5, 7]])
    assert batch.labeled is None and data.test_batch.y.shape == (data.test.shape[0],)


def test_a_label_budget_is_balanced_and_fixed(tmp_path):
    data = load_dataset("digits", labeled=25)
    kept = data.train_y[data.labeled]
    assert int(data.labeled.sum()) == 25
    assert sorted(torch.bincount(kept, minlength=10).tolist()) == [2] * 5 + [3] * 5
    assert torch.equal(load_dataset("digits", labeled=25).labeled, data.labeled)
    with pytest.raises(pyrovae.DataError, match="has no labels"):
        np.save(tmp_path / "x.npy", np.zeros((20, 3)))
        load_dataset("file", str(tmp_path / "x.npy"), labeled=3)


def test_file_labels(tmp_path):
    x = np.random.default_rng(0).random((50, 4)).astype(np.float32)
    y = np.arange(50) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_dataset("file", str(tmp_path / "d.npz"), test_fraction=0.2)
    assert data.num_classes == 3 and data.train_y.shape == (40,) and data.test_y.shape == (10,)
    rows = {tuple(r): int(label) for r, label in zip(x.round(5).tolist(), y)}
    for xs, ys in ((data.train, data.train_y), (data.test, data.test_y)):
        assert all(rows[tuple(r)] == int(label) for r, label in zip(xs.numpy().round(5).tolist(), ys))
    np.savez(tmp_path / "bad.npz", x=x, y=y[:10])
    with pytest.raises(pyrovae.DataError, match=r"labels must be one number per point, shape \(50,\)"):
        load_dataset("file", str(tmp_path / "bad.npz"))


def test_terms_shape_contract():
    terms = Terms(torch.zeros(2, 3), kl=torch.zeros(1, 3), log_prior=torch.ones(2, 3), log_q=torch.zeros(2, 3))
    assert terms.num_particles == 2 and torch.equal(terms.log_weights, torch.ones(2, 3))
    assert "vae" in MODELS.names()


class ShiftedPosterior(VAE):
    """A VAE whose posterior is not the encoder's Gaussian (as an IAF posterior would not be)."""

    def posterior(self, x):
        loc, log_var = self.encoder(x)
        return dist.Normal(loc + 1.0, torch.exp(0.5 * log_var)).to_event(1)


def test_a_vae_subclass_with_its_own_posterior_is_trained_with_it():
    model = ShiftedPosterior((1, 8, 8), 2)
    x = binary_batch(6)
    assert not model.closed_forms_hold and model.noise_shape(6, 1) is None
    pyro.set_rng_seed(0)
    a = model.terms(x, 3, kl=False)
    pyro.set_rng_seed(0)
    b = Model.terms(model, x, 3, kl=False)
    torch.testing.assert_close(a.log_weights, b.log_weights)
    torch.testing.assert_close(model.encode(x), model.encoder(x)[0] + 1.0)
    pyro.set_rng_seed(0)
    z = pyro.poutine.trace(model.guide).get_trace(x).nodes["z"]["value"]
    with torch.no_grad():
        assert abs(float(z.mean()) - float(model.encoder(x)[0].mean()) - 1.0) < 1.0  # drawn around loc + 1


def test_a_family_that_does_not_fit_the_data_is_one_line():
    class Broken(Model):
        def model(self, batch, num_data=None):
            with self.data_plate(batch, num_data):
                pyro.sample("x", dist.Normal(torch.zeros(3), 1.0).to_event(1), obs=batch.x)

        def guide(self, batch, num_data=None):
            pass

    data = load_dataset("digits")
    with pytest.raises(ConfigError, match=r"model \(Broken\): a dry batch of 2 points fails"):
        fit(Broken(data.event_shape), data, epochs=1, progress=False)


def test_a_model_built_in_python_trains_into_a_run_folder_and_loads_back(tmp_path):
    class Encoder(nn.Module):  # its own networks, in no registry
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(64, 4)

        def forward(self, x):
            return self.net(x.flatten(1)).chunk(2, -1)

    def build():
        return VAE((1, 8, 8), 2, encoder=Encoder(), decoder={"name": "mlp", "hidden": [16]})

    config = pyrovae.load_config(None, ["train.epochs=2", "train.progress=false"])
    run = pyrovae.train(config, tmp_path / "run", model=build())
    with pytest.raises(pyrovae.RunDirError, match=r"pyrovae.load\(run, model=...\)"):
        pyrovae.load(run)
    loaded = pyrovae.load(run, model=build())
    saved = pyrovae.app.checkpoint.read_checkpoint(run / "checkpoint.pt")["model"]
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
