"""Monte Carlo EM and its HMC: per-datapoint chains that leave the exact pPCA posterior
invariant, posterior moments and log p(x) against closed forms, and EM raising the exact
likelihood."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import LinearDecoder

from pyrovae import VAE, ConfigError, Dataset, MonteCarloEM, hmc_log_likelihood
from pyrovae.infer.hmc import hmc_transition, log_joint, posterior_moments


def ppca_posterior(w, b, s, x):
    """The exact p(z | x) of z ~ N(0, I), x = W z + b + N(0, s^2 I): N(A (x - b), C)."""
    cov = torch.linalg.inv(w.T @ w / s**2 + torch.eye(w.shape[1]))
    return (x - b) @ (cov @ w.T / s**2).T, cov


@pytest.fixture
def linear_gaussian():
    torch.manual_seed(0)
    latent, dim, s = 2, 6, 0.5
    w, b = torch.randn(dim, latent), torch.randn(dim)
    vae = VAE((dim,), latent, likelihood={"name": "gaussian", "scale": s}, decoder=LinearDecoder(w, b))
    marginal = dist.MultivariateNormal(b, w @ w.T + s**2 * torch.eye(dim))
    return vae, w, b, s, marginal


def test_log_joint_is_prior_plus_likelihood(linear_gaussian):
    vae, w, b, s, _ = linear_gaussian
    z, x = torch.randn(7, 2), torch.randn(7, 6)
    expected = dist.Normal(0, 1).log_prob(z).sum(-1) + dist.Normal(z @ w.T + b, s).log_prob(x).sum(-1)
    assert torch.allclose(log_joint(vae, x, z), expected, atol=1e-5)


def test_hmc_leaves_each_datapoints_posterior_invariant(linear_gaussian):
    vae, w, b, s, marginal = linear_gaussian
    x = marginal.sample((3,)).repeat_interleave(2000, 0)  # 2000 chains for each of three datapoints
    mean, cov = ppca_posterior(w, b, s, x)
    z = mean + torch.randn_like(mean) @ torch.linalg.cholesky(cov).T  # start at the exact posterior
    accepted = []
    for _ in range(5):
        z, accept_prob = hmc_transition(vae, x, z, 0.1, num_leapfrog=10)
        accepted.append(accept_prob.mean())
    assert torch.stack(accepted).mean() > 0.8
    for i in range(3):
        chains = z[2000 * i: 2000 * (i + 1)]
        # the mean within 4 standard errors, the covariance within 15%
        assert (chains.mean(0) - mean[2000 * i]).abs().max() < 4 * cov.diagonal().sqrt().max() / math.sqrt(2000)
        assert torch.allclose(torch.cov(chains.T), cov, atol=0.15 * cov.diagonal().max())


def test_hmc_accepts_by_datapoint(linear_gaussian):
    vae, *_ = linear_gaussian
    x = torch.randn(4, 6)
    x[0] = 1e4  # a datapoint with an absurd posterior: a big step diverges there and is rejected
    z0 = torch.zeros(4, 2)
    z, accept_prob = hmc_transition(vae, x, z0, torch.tensor([0.5, 0.05, 0.05, 0.05]), num_leapfrog=10)
    assert accept_prob[0] < 1e-3 and torch.equal(z[0], z0[0])
    assert (accept_prob[1:] > 0.5).all() and not torch.equal(z[1:], z0[1:])


def test_posterior_moments_and_log_likelihood_match_closed_forms(linear_gaussian):
    vae, w, b, s, marginal = linear_gaussian
    x = marginal.sample((30,))
    mean, cov = ppca_posterior(w, b, s, x)
    est_mean, est_var = posterior_moments(vae, x, burn_in=50, num_samples=200)
    assert (est_mean - mean).abs().max() < 0.15
    assert torch.allclose(est_var.mean(0), cov.diagonal(), rtol=0.25)
    error = hmc_log_likelihood(vae, x, num_samples=2000) - marginal.log_prob(x)
    assert error.abs().mean() < 0.03 and error.abs().max() < 0.15


def test_hmc_log_likelihood_is_seeded_and_chunked(linear_gaussian):
    vae, *_, marginal = linear_gaussian
    x = marginal.sample((10,))
    one = hmc_log_likelihood(vae, x, num_samples=100, burn_in=10, chain_samples=10, seed=3)
    assert torch.equal(one, hmc_log_likelihood(vae, x, num_samples=100, burn_in=10, chain_samples=10, seed=3))
    assert not torch.equal(one, hmc_log_likelihood(vae, x, num_samples=100, burn_in=10, chain_samples=10, seed=4))
    chunked = hmc_log_likelihood(vae, x, num_samples=600, burn_in=50, chain_samples=50, seed=3, chunk=4)
    assert chunked.shape == (10,) and (chunked - marginal.log_prob(x)).abs().mean() < 0.05


def test_monte_carlo_em_raises_the_exact_likelihood_and_leaves_the_encoder(linear_gaussian):
    vae, w, b, s, marginal = linear_gaussian
    train = marginal.sample((500,))
    fresh = VAE((6,), 2, likelihood={"name": "gaussian", "scale": s},
                decoder=LinearDecoder(0.1 * torch.randn(6, 2), torch.zeros(6)))
    encoder = [p.detach().clone() for p in fresh.encoder.parameters()]

    def exact(model):
        w_, b_ = model.decoder.w.detach(), model.decoder.b.detach()
        return dist.MultivariateNormal(b_, w_ @ w_.T + s**2 * torch.eye(6)).log_prob(train).mean().item()

    before = exact(fresh)
    em = MonteCarloEM(fresh, Dataset("ppca", train, train[:10]), {"name": "adam", "lr": 0.02}, seed=1)
    records = em.fit(15, batch_size=50)
    assert exact(fresh) > before + 1.0
    assert exact(fresh) > exact(vae) - 0.5  # close to the maximum-likelihood neighbourhood of the truth
    assert 0.6 < records[-1]["accept_rate"] <= 1 and records[-1]["samples_seen"] == 15 * 500
    assert all(torch.equal(p, q) for p, q in zip(encoder, fresh.encoder.parameters()))


def test_monte_carlo_em_checks_its_options(linear_gaussian):
    vae, *_, marginal = linear_gaussian
    data = Dataset("ppca", marginal.sample((20,)), marginal.sample((5,)))
    with pytest.raises(ConfigError, match="target_accept"):
        MonteCarloEM(vae, data, target_accept=1.5)
    with pytest.raises(ConfigError, match="weight_updates"):
        MonteCarloEM(vae, data, weight_updates=0)


def test_mcem_as_a_training_algorithm_raises_the_exact_likelihood_and_resumes_bit_for_bit(linear_gaussian, tmp_path):
    """train.algorithm = "mcem": the same E- and M-steps through the training loop, with the chains
    in the checkpoint, so a resumed run ends where a straight one does."""
    from pyrovae import Config, fit, train
    from pyrovae.app.checkpoint import read_checkpoint

    vae, w, b, s, marginal = linear_gaussian
    x = marginal.sample((400,))

    def fresh():
        pyro.set_rng_seed(3)
        return VAE((6,), 2, likelihood={"name": "gaussian", "scale": s},
                   decoder=LinearDecoder(0.1 * torch.randn(6, 2), torch.zeros(6)))

    def exact(model):
        w_, b_ = model.decoder.w.detach(), model.decoder.b.detach()
        return dist.MultivariateNormal(b_, w_ @ w_.T + s**2 * torch.eye(6)).log_prob(x).mean().item()

    np.save(tmp_path / "ppca.npy", np.concatenate([x.numpy(), marginal.sample((40,)).numpy()]))
    model = fresh()
    before, encoder = exact(model), [p.detach().clone() for p in model.encoder.parameters()]
    data = Dataset("ppca", x, x[:20])
    metrics = fit(model, data, epochs=12, batch_size=50, algorithm={"name": "mcem", "weight_updates": 5},
                  optim={"name": "adam", "lr": 0.02}, progress=False, eval_every=12)
    assert exact(model) > before + 1.0 and exact(model) > exact(vae) - 0.5
    assert all(torch.equal(p, q) for p, q in zip(encoder, model.encoder.parameters()))
    assert metrics[-1]["train_objective"] > metrics[0]["train_objective"]  # the mean log p(x, z) at the chains

    config = Config()
    config.data.name, config.data.path = "file", str(tmp_path / "ppca.npy")
    config.model.likelihood = {"name": "gaussian", "scale": s}
    config.train.algorithm = {"name": "mcem", "weight_updates": 2}
    config.train.progress, config.train.batch_size, config.optim = False, 40, {"name": "adam", "lr": 0.02}
    config.train.epochs = 3
    straight = train(config, tmp_path / "straight", model=fresh())
    config.train.epochs = 2
    half = train(config, tmp_path / "half", model=fresh())
    config.train.epochs = 3
    train(config, half, resume=True, model=fresh())
    a, b_ = read_checkpoint(straight / "checkpoint.pt"), read_checkpoint(half / "checkpoint.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b_["model"][k], rtol=0, atol=0, msg=k)
    torch.testing.assert_close(a["algorithm"]["chains"]["z"], b_["algorithm"]["chains"]["z"], rtol=0, atol=0)


def test_mcem_refuses_what_it_cannot_do():
    from pyrovae import load_config

    with pytest.raises(ConfigError, match="train.algorithm = 'mcem' has no KL term"):
        load_config(None, ["train.algorithm=mcem", "train.num_particles=2"])
    with pytest.raises(ConfigError, match="train.algorithm.hmc_steps = 'x': expected an integer"):
        load_config(None, ["train.algorithm={ name = 'mcem', hmc_steps = 'x' }"])
