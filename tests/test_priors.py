"""Priors: shapes, closed-form KL against Monte Carlo, the mixture's density."""

import math

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from pyrovae import PRIORS, VAE, ConfigError, resolve_estimator


@pytest.mark.parametrize("name", PRIORS.names())
def test_every_prior_builds_samples_and_scores(name):
    prior = VAE((1, 4, 4), 3, prior=name).prior  # built through the VAE: the VampPrior needs its encoder
    p = prior((5,))
    assert p.batch_shape == (5,) and p.event_shape == (3,)
    z = p.sample()
    assert z.shape == (5, 3)
    assert p.log_prob(z).shape == (5,)
    assert torch.isfinite(p.log_prob(z)).all()
    assert prior().sample((4, 2)).shape == (4, 2, 3)


def _random_guide(m=4, d=3):
    return dist.Normal(torch.randn(m, d), torch.rand(m, d) + 0.3).to_event(1)


@pytest.mark.parametrize("name", [n for n in PRIORS.names() if PRIORS.get(n).has_closed_form_kl])
def test_analytic_kl_equals_monte_carlo_kl(name):
    prior = PRIORS.build(name, latent_dim=3)
    with torch.no_grad():
        for p in prior.parameters():  # move learned priors away from N(0, I)
            p.add_(0.5 * torch.randn_like(p))
    q = _random_guide()
    p = prior((4,))
    with torch.no_grad():
        analytic = kl_divergence(q, p)
        z = q.sample((100_000,))
        log_ratio = q.log_prob(z) - p.log_prob(z)
    mc, stderr = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(z.shape[0])
    assert ((analytic - mc).abs() < 5 * stderr + 1e-4).all(), (analytic, mc, stderr)


def test_standard_normal_kl_is_the_papers_closed_form():
    q = _random_guide()
    loc, var = q.base_dist.loc, q.base_dist.scale**2
    expected = 0.5 * (loc**2 + var - 1 - var.log()).sum(-1)  # Kingma & Welling 2014, App. B
    torch.testing.assert_close(kl_divergence(q, PRIORS.build("standard_normal", latent_dim=3)((4,))), expected)


@pytest.mark.parametrize("name", PRIORS.names())
def test_log_prob_and_closed_form_kl_equal_the_distributions(name):
    # The training loop calls prior.log_prob and prior.kl_from_normal (the standard normal writes
    # both in closed form): the same values and gradients as the distribution's.
    prior = VAE((1, 4, 4), 3, prior=name).prior
    loc, log_var = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    z, z_again = torch.randn(2, 4, 3, requires_grad=True), torch.randn(2, 4, 3)  # two tensors: flows cache
    z_again = z_again.copy_(z.detach()).requires_grad_()
    direct, reference = prior.log_prob(z), prior().log_prob(z_again)
    torch.testing.assert_close(direct, reference)
    torch.testing.assert_close(torch.autograd.grad(direct.sum(), z)[0],
                               torch.autograd.grad(reference.sum(), z_again)[0])
    if prior.has_closed_form_kl:
        q = dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)
        direct, reference = prior.kl_from_normal(loc, log_var), kl_divergence(q, prior())
        torch.testing.assert_close(direct, reference)
        for a, b in zip(torch.autograd.grad(direct.sum(), (loc, log_var)),
                        torch.autograd.grad(reference.sum(), (loc, log_var))):
            torch.testing.assert_close(a, b)


def test_mixture_density_is_weighted_sum_of_gaussians():
    prior = PRIORS.build({"name": "mixture", "num_components": 4}, latent_dim=2)
    with torch.no_grad():
        prior.logits.copy_(torch.randn(4))
    z = torch.randn(6, 2)
    weights = torch.softmax(prior.logits, 0)
    comps = dist.Normal(prior.locs, prior.log_scales.exp()).to_event(1)
    expected = torch.stack([weights[k] * comps.log_prob(z.unsqueeze(1))[:, k].exp() for k in range(4)]).sum(0).log()
    torch.testing.assert_close(prior().log_prob(z), expected, rtol=1e-5, atol=1e-5)


def test_auto_estimator_follows_the_prior():
    analytic = VAE((4,), 2, prior="gaussian", likelihood="gaussian")
    mixture = VAE((4,), 2, prior="mixture", likelihood="gaussian")
    assert resolve_estimator("auto", analytic) == "analytic"
    assert resolve_estimator("auto", mixture) == "mc"
    with pytest.raises(ConfigError, match="closed-form"):
        resolve_estimator("analytic", mixture)


def test_unknown_prior_lists_the_valid_names():
    with pytest.raises(ConfigError, match="valid: flow, gaussian, mixture, standard_normal, vamp"):
        PRIORS.build("vampire", "model.prior", latent_dim=2)
    with pytest.raises(ConfigError, match="num_components"):
        PRIORS.build({"name": "mixture", "num_components": 0}, "model.prior", latent_dim=2)
    with pytest.raises(ConfigError, match="valid options: num_components, spread"):
        PRIORS.build({"name": "mixture", "k": 3}, "model.prior", latent_dim=2)
