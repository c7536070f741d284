"""Likelihoods: shapes, the closed forms they stand for, and support checks that name the fix."""

import math

import pytest
import torch
from torch.nn import functional as F

from pyrovae import LIKELIHOODS, DataError

SPECS = ["bernoulli", "continuous_bernoulli", "gaussian", {"name": "gaussian", "learn_scale": True},
         "laplace", {"name": "laplace", "learn_scale": True, "sigmoid_mean": True},
         "poisson", {"name": "negative_binomial", "library": "observed"},
         {"name": "negative_binomial", "dispersion": "shared"}, "zero_inflated_negative_binomial"]
EVENT = (1, 4, 3)


def _params(lik, batch=(2, 5)):
    return tuple(torch.randn(*batch, *EVENT) for _ in range(lik.num_params))


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_every_likelihood_builds_samples_and_scores(spec):
    lik = LIKELIHOODS.build(spec, event_shape=EVENT)
    d = lik(_params(lik), len(EVENT))
    assert d.batch_shape == (2, 5) and d.event_shape == EVENT
    x = d.sample()
    assert x.shape == (2, 5, *EVENT)
    assert d.log_prob(x).shape == (2, 5) and torch.isfinite(d.log_prob(x)).all()
    assert lik.mean(_params(lik)).shape == (2, 5, *EVENT)
    lik.check_data(x)


def test_bernoulli_is_negative_binary_cross_entropy():
    lik = LIKELIHOODS.build("bernoulli")
    logits = torch.randn(3, *EVENT)
    x = torch.bernoulli(torch.full_like(logits, 0.5))
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(lik((logits,), 3).log_prob(x), -bce)


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_log_prob_equals_the_distributions_with_data_broadcast_over_particles(spec):
    # The training loop's log_prob (Bernoulli: its closed form) against the distribution's, for
    # params of shape (L, M, *event) and data of shape (M, *event), in value and gradient.
    lik = LIKELIHOODS.build(spec, event_shape=EVENT)
    params = tuple(p.requires_grad_() for p in _params(lik, batch=(3, 5)))
    x = lik(tuple(p.detach() for p in params), len(EVENT)).sample()[0]
    direct, reference = lik.log_prob(params, x, len(EVENT)), lik(params, len(EVENT)).log_prob(x)
    assert direct.shape == (3, 5)
    torch.testing.assert_close(direct, reference)
    for a, b in zip(torch.autograd.grad(direct.sum(), params), torch.autograd.grad(reference.sum(), params)):
        torch.testing.assert_close(a, b)


def test_gaussian_with_unit_sigma_is_squared_error():
    lik = LIKELIHOODS.build("gaussian")
    mu, x = torch.randn(3, *EVENT), torch.randn(3, *EVENT)
    d = math.prod(EVENT)
    expected = -0.5 * ((x - mu) ** 2).sum((1, 2, 3)) - 0.5 * d * math.log(2 * math.pi)
    torch.testing.assert_close(lik((mu,), 3).log_prob(x), expected)


def test_learned_gaussian_scale_and_sigmoid_mean():
    lik = LIKELIHOODS.build({"name": "gaussian", "learn_scale": True, "sigmoid_mean": True, "min_scale": 0.01})
    raw_mu, raw_s, x = torch.randn(3, *EVENT), torch.randn(3, *EVENT), torch.rand(3, *EVENT)
    mu, s = torch.sigmoid(raw_mu), 0.01 + F.softplus(raw_s)
    expected = (-0.5 * ((x - mu) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum((1, 2, 3))
    torch.testing.assert_close(lik((raw_mu, raw_s), 3).log_prob(x), expected)


def test_laplace_is_l1_loss():
    lik = LIKELIHOODS.build({"name": "laplace", "scale": 0.5})
    mu, x = torch.randn(3, *EVENT), torch.randn(3, *EVENT)
    expected = -(x - mu).abs().sum((1, 2, 3)) / 0.5 - math.prod(EVENT) * math.log(2 * 0.5)
    torch.testing.assert_close(lik((mu,), 3).log_prob(x), expected)


def test_continuous_bernoulli_density_integrates_to_one():
    lik = LIKELIHOODS.build("continuous_bernoulli")
    grid = torch.linspace(0, 1, 20001)
    for logit in (-3.0, 0.3, 4.0):
        density = lik((torch.full((1,), logit),), 0).log_prob(grid.unsqueeze(-1)).exp().squeeze(-1)
        assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-3)


def test_support_checks_name_the_fix():
    grey = torch.rand(4, *EVENT)
    with pytest.raises(DataError, match="binarize.*continuous_bernoulli"):
        LIKELIHOODS.build("bernoulli").check_data(grey)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        LIKELIHOODS.build("continuous_bernoulli").check_data(grey * 255)
    with pytest.raises(DataError, match="outside the support of 'gaussian'"):
        LIKELIHOODS.build("gaussian").check_data(torch.tensor([[float("nan")]]))


def test_bad_options_are_rejected():
    from pyrovae import ConfigError

    with pytest.raises(ConfigError, match="scale must be > 0"):
        LIKELIHOODS.build({"name": "gaussian", "scale": -1.0})
    with pytest.raises(ConfigError, match="expected true or false"):
        LIKELIHOODS.build({"name": "gaussian", "learn_scale": "yes"})


def test_an_unregistered_likelihood_is_named_by_its_class():
    registered = LIKELIHOODS.build("bernoulli", event_shape=(3,))

    class Mine(type(registered)):
        pass

    assert registered.name == "bernoulli"
    registered.__class__ = Mine
    assert registered.name == "Mine"  # it raised StopIteration
