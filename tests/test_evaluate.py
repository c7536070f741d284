"""Objectives and evaluation: the IWAE bound under minibatches, the log-likelihood against a
closed form (probabilistic PCA), active units, KL per dimension, KL annealing."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import binary_batch
from pyro.infer import SVI, RenyiELBO, TraceMeanField_ELBO

from pyrovae import (
    IWAE,
    VAE,
    PosteriorCollapseWarning,
    active_units,
    dataset_elbo,
    elbo_per_datapoint,
    fit,
    kl_per_dimension,
    load_dataset,
    log_likelihood,
)
from pyrovae.infer.elbos import LatentScale
from pyrovae.training.loop import beta_at
from pyrovae.training.train_config import TrainConfig


def test_log_likelihood_matches_the_closed_form(ppca):
    vae, x, exact = ppca
    estimate = log_likelihood(vae, x, num_samples=5000)
    # per-datapoint Monte Carlo error, from the spread of independent repeats with fewer samples
    repeats = torch.stack([log_likelihood(vae, x, 500, seed=s) for s in range(8)])
    mc_error = repeats.std(0) / math.sqrt(10)  # 5000 samples: sqrt(10) times less than 500
    assert ((estimate - exact).abs() <= 4 * mc_error + 1e-3).all(), (estimate - exact, mc_error)
    assert (estimate - exact).abs().max() < 0.1


def test_elbo_below_iwae_below_log_likelihood_rising_in_k(ppca):
    vae, x, exact = ppca
    elbo = dataset_elbo(vae, x, num_particles=2000)
    many = x.repeat(50, 1)  # 50 independent estimates per datapoint, to average out the noise
    iwae = {k: float(log_likelihood(vae, many, k, seed=k).mean()) for k in (1, 5, 50, 500)}
    assert elbo == pytest.approx(iwae[1], abs=0.1)  # IWAE_1 is the ELBO (estimator A)
    assert elbo < iwae[5] < iwae[50] < iwae[500] <= float(exact.mean()) + 0.01


def test_log_likelihood_memory_is_chunked(ppca):
    vae, x, exact = ppca
    tiny = log_likelihood(vae, x, num_samples=300, max_elements=1)  # one sample per chunk
    whole = log_likelihood(vae, x, num_samples=300)
    torch.testing.assert_close(tiny, whole, rtol=0, atol=0.2)
    assert log_likelihood(vae, x, 10, batch_size=7).shape == (40,)


@pytest.mark.parametrize("prior", ["standard_normal", "mixture"])
def test_the_importance_sampler_encodes_once_and_gives_the_trace_paths_weights(prior):
    """log_likelihood's fast path (x encoded once, the closed forms of VAE.terms) against the general,
    trace-derived Model.terms at the same z: the same log-weights, and the same gradients."""
    from pyrovae import Model

    torch.manual_seed(0)
    vae = VAE((12,), 3, prior=prior, encoder={"name": "mlp", "hidden": [16]}, decoder={"name": "mlp", "hidden": [16]})
    x = binary_batch(6, (12,))
    calls = []
    vae.encoder.register_forward_hook(lambda *a: calls.append(1))
    draw = vae.importance_sampler(x, num_data=50)
    noise = torch.randn(4, 6, 3)
    fast = torch.cat([draw(4, noise), draw(4, noise)])
    assert len(calls) == 1  # one encoding for every chunk
    loc, log_var = vae.encoder(x)
    z = loc + noise * torch.exp(0.5 * log_var)
    general = Model.terms(vae, x, 4, 50, kl=False, values={"z": z}).log_weights
    torch.testing.assert_close(fast, torch.cat([general, general]), rtol=1e-5, atol=1e-4)
    grads = [torch.autograd.grad(w.sum(), list(vae.parameters()), allow_unused=True)
             for w in (vae.importance_sampler(x, 50)(4, noise),
                       Model.terms(vae, x, 4, 50, kl=False, values={"z": vae.encoder(x)[0] + noise * torch.exp(
                           0.5 * vae.encoder(x)[1])}).log_weights)]
    for a, b in zip(*grads):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


class Terminal(__import__("io").StringIO):
    def isatty(self):
        return True


def test_evaluate_shows_a_bar_for_each_estimate_on_a_terminal_only(ppca, monkeypatch):
    from pyrovae import evaluate

    vae, x, _ = ppca
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    quiet = evaluate(vae, x, nll_samples=40, iwae_samples=5, elbo_particles=2)
    assert terminal.getvalue() == ""
    shown = evaluate(vae, x, nll_samples=40, iwae_samples=5, elbo_particles=2, progress=True)
    text = terminal.getvalue()
    for title in ("ELBO (L=2)", "IWAE (k=5)", "NLL (K=40)"):
        assert title in text, text
    assert "/1.60k" in text and "sample/s" in text  # the NLL bar counts its 40 x 40 samples, with a rate
    assert shown == quiet  # the same numbers, bars or not
    pipe = __import__("io").StringIO()  # not a terminal: no bar
    monkeypatch.setattr("sys.stderr", pipe)
    evaluate(vae, x, nll_samples=40, iwae_samples=5, elbo_particles=2, progress=True)
    assert pipe.getvalue() == ""


# -- the IWAE objective -------------------------------------------------------------------------------
def per_datapoint_iwae(vae, x, k):
    with torch.no_grad():
        q = vae.posterior(x)
        z = q.rsample((k,))
        log_w = vae.likelihood_dist(z).log_prob(x) + vae.prior().log_prob(z) - q.log_prob(z)
        return torch.logsumexp(log_w, 0) - math.log(k)


@pytest.mark.parametrize("k", [1, 50])
def test_iwae_minibatch_loss_is_n_over_m_times_per_datapoint_bounds(k):
    vae = VAE((1, 8, 8), 3)
    x = binary_batch(10)
    pyro.set_rng_seed(3)
    loss = IWAE(num_particles=k, max_plate_nesting=1).loss(vae.model, vae.guide, x, 1000)
    pyro.set_rng_seed(3)
    direct = per_datapoint_iwae(vae, x, k)
    assert loss == pytest.approx(-100 * float(direct.sum()), rel=1e-5)


def test_iwae_agrees_with_renyi_on_one_datapoint_and_fixes_it_under_subsampling():
    """Pyro's RenyiELBO(alpha=0) applies the N/M scale to the log-weights inside the
    log-sum-exp, sum_i log (1/k) sum_j w_ij^(N/M); the IWAE bound of the data set is
    (N/M) sum_i log (1/k) sum_j w_ij. They agree without subsampling only."""
    renyi = lambda **kw: RenyiELBO(alpha=0, vectorize_particles=True, **kw)  # noqa: E731
    vae = VAE((1, 8, 8), 3)
    for m, n in ((10, None), (10, 1000)):
        x = binary_batch(m)
        losses = []
        for cls in (IWAE, renyi):
            pyro.set_rng_seed(4)
            losses.append(cls(num_particles=20, max_plate_nesting=1).loss(vae.model, vae.guide, x, n))
        pyro.set_rng_seed(4)
        with torch.no_grad():
            q = vae.posterior(x)
            z = q.rsample((20,))
            log_w = vae.likelihood_dist(z).log_prob(x) + vae.prior().log_prob(z) - q.log_prob(z)  # (k, M)
        scale = (n or m) / m
        right = -scale * float((torch.logsumexp(log_w, 0) - math.log(20)).sum())
        renyis = -float((torch.logsumexp(scale * log_w, 0) - math.log(20)).sum())
        assert losses[0] == pytest.approx(right, rel=1e-5)
        assert losses[1] == pytest.approx(renyis, rel=1e-5)
        if n is None:
            assert losses[0] == pytest.approx(losses[1], rel=1e-5)
        else:
            assert abs(losses[0] - losses[1]) > 100  # nats: not a rounding difference


def test_iwae_trains_with_plain_svi_and_by_name():
    x = binary_batch(32)
    vae = VAE((1, 8, 8), 2, name="iwae_vae")
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), IWAE(num_particles=5))
    losses = [svi.step(x, num_data=320) for _ in range(50)]
    assert sum(losses[-10:]) < sum(losses[:10])
    data = load_dataset("digits")
    metrics = fit(VAE(data.event_shape, 2), data, epochs=2, estimator="iwae", num_particles=5, eval_every=1,
                  progress=False)
    # the objective is the IWAE bound, the reported ELBO the true ELBO: IWAE_5 >= ELBO
    assert all(m["train_objective"] > m["train_elbo"] for m in metrics)


def test_iwae_shares_a_global_site_over_the_n_points():
    """A global latent counts 1/N of log p(g) - log q(g) in each datapoint's weights, as Model.terms
    has it: here that difference is -log 2 for every draw (q = U(0, 1), p = U(0, 2))."""
    def model(x):
        pyro.sample("g", dist.Uniform(0.0, 2.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    def guide(x):
        pyro.sample("g", dist.Uniform(0.0, 1.0))

    x = torch.randn(4)
    expected = -float(dist.Normal(0.0, 1.0).log_prob(x).sum()) + math.log(2)  # -(sum_i log p(x_i) - 4 log 2 / 4)
    assert IWAE(num_particles=3).loss(model, guide, x) == pytest.approx(expected, rel=1e-5)


# -- diagnostics -------------------------------------------------------------------------------------
def test_active_units_count_only_the_live_ones():
    vae = VAE((1, 8, 8), 5, encoder={"name": "mlp", "hidden": [32]})
    last = vae.encoder.net[-1]
    with torch.no_grad():  # loc outputs 2, 3, 4 ignore the input: dead units
        last.weight[2:5].zero_()
        last.bias[2:5].zero_()
        last.weight[:2].mul_(5.0)
    x = load_dataset("digits").test
    count, activity = active_units(vae, x)
    assert count == 2
    assert (activity[2:] == 0).all() and (activity[:2] > 0.01).all()


def test_kl_per_dimension_sums_to_the_kl():
    vae = VAE((1, 8, 8), 4)
    x = binary_batch(20)
    per_dim = kl_per_dimension(vae, x)
    with torch.no_grad():
        total = torch.distributions.kl_divergence(vae.posterior(x), vae.prior((20,))).mean()
    assert sum(per_dim) == pytest.approx(float(total), rel=1e-5)
    assert kl_per_dimension(VAE((1, 8, 8), 4, prior="mixture"), x) is None


def test_collapse_warning():
    data = load_dataset("digits")
    with pytest.warns(PosteriorCollapseWarning, match="latent units are active"):
        fit(VAE(data.event_shape, 6), data, epochs=3, beta=30.0, eval_every=1, progress=False)


# -- KL annealing and beta -----------------------------------------------------------------------------
def test_beta_scales_only_the_kl_term():
    vae = VAE((1, 8, 8), 3)
    x = binary_batch(8)
    values = {}
    for beta in (0.0, 1.0, 2.0):
        pyro.set_rng_seed(5)
        with LatentScale(beta):
            values[beta] = TraceMeanField_ELBO().loss(vae.model, vae.guide, x, 80)
    with torch.no_grad():
        kl = 10 * float(torch.distributions.kl_divergence(vae.posterior(x), vae.prior((8,))).sum())
    assert values[1.0] - values[0.0] == pytest.approx(kl, rel=1e-4)
    assert values[2.0] - values[0.0] == pytest.approx(2 * kl, rel=1e-4)


def test_kl_warmup_schedule_and_true_elbo_reporting():
    cfg = TrainConfig(beta=1.0, kl_warmup_epochs=2)
    assert [beta_at(cfg, s, 10) for s in (0, 9, 19, 30)] == [0.05, 0.5, 1.0, 1.0]
    data = load_dataset("digits")
    metrics = fit(VAE(data.event_shape, 2), data, epochs=3, kl_warmup_epochs=2, eval_every=1, progress=False)
    assert [round(m["beta"], 6) for m in metrics] == [0.5, 1.0, 1.0]
    assert metrics[0]["train_objective"] > metrics[0]["train_elbo"]  # a down-weighted KL flatters the objective
    assert metrics[2]["train_objective"] == metrics[2]["train_elbo"]


# -- the priors whose KL has no closed form ------------------------------------------------------------
def test_flow_prior_is_a_normalized_density():
    vae = VAE((1, 8, 8), 2, prior={"name": "flow", "num_flows": 2, "hidden": [16]})
    with torch.no_grad():
        for p in vae.prior.parameters():  # a non-trivial flow, with tails light enough for a finite grid
            p.add_(0.05 * torch.randn_like(p))
        g = torch.linspace(-9, 9, 401)
        grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        mass = vae.prior().log_prob(grid).exp().sum() * (g[1] - g[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=0.02)


def test_vamp_prior_is_the_mean_of_the_pseudo_input_posteriors():
    vae = VAE((1, 8, 8), 3, prior={"name": "vamp", "num_pseudo_inputs": 7})
    z = torch.randn(5, 3)
    with torch.no_grad():
        q = vae.posterior(vae.prior.pseudo_inputs)  # batch of 7
        expected = torch.logsumexp(q.log_prob(z.unsqueeze(1)), 1) - math.log(7)
        torch.testing.assert_close(vae.prior().log_prob(z), expected)
    assert "prior.pseudo_inputs" in dict(vae.named_parameters())
    assert not any(k.startswith("prior.encoder") for k in vae.state_dict())  # the encoder is not copied


@pytest.mark.parametrize("prior", [{"name": "vamp", "num_pseudo_inputs": 20}, {"name": "flow", "hidden": [16]}])
def test_vamp_and_flow_train_with_the_mc_estimator(prior):
    data = load_dataset("digits")
    vae = VAE(data.event_shape, 2, prior=prior)
    metrics = fit(vae, data, epochs=2, eval_every=1, progress=False)
    assert metrics[-1]["test_elbo"] > metrics[0]["test_elbo"] - 1.0
    with torch.no_grad():
        assert math.isfinite(float(elbo_per_datapoint(vae, data.test[:10]).mean()))
