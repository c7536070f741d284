"""The VampPrior at speed, tied to the general computation: the mixture's log-density by one
matrix product (against torch's MixtureSameFamily, in value and gradient, at the scales where the
expansion would cancel in float32), and p(z) computed once per evaluation (the pseudo-inputs'
encoder pass counted)."""

import contextlib

import pyro.distributions as dist
import pytest
import torch

import pyrovae
from pyrovae import VAE
from pyrovae.parts.priors import DiagonalGaussianMixture, gaussian_mixture, priors_held


def _reference(logits, locs, scales):
    """torch's mixture in float64: the general computation, exact to float32's rounding."""
    return dist.MixtureSameFamily(dist.Categorical(logits=logits.double()),
                                  dist.Normal(locs.double(), scales.double()).to_event(1))


@pytest.mark.parametrize("log_scale_spread", [0.5, 4.0])
@pytest.mark.parametrize("z_shape, batch", [((3, 8, 6), (8,)), ((6,), ()), ((5, 6), (4, 5)), ((2, 1, 6), (3,))])
def test_the_mixtures_log_density_is_torchs_in_value_and_gradient(z_shape, batch, log_scale_spread):
    """Scales from e^-8 to e^8 (log_scale_spread 4): a float32 expansion would be off by nats there."""
    torch.manual_seed(0)
    k, d = 7, 6
    logits = torch.randn(k, requires_grad=True)
    locs = (3 * torch.randn(k, d)).requires_grad_()
    log_scales = (log_scale_spread * torch.randn(k, d)).clamp(-8, 8).requires_grad_()
    z = (locs.detach()[torch.randint(k, z_shape[:-1])] + 0.3 * torch.randn(z_shape)).requires_grad_()
    fast = gaussian_mixture(logits, locs, log_scales.exp())
    fast = fast.expand(batch) if batch else fast
    assert isinstance(fast, DiagonalGaussianMixture)
    reference = _reference(logits, locs, log_scales.exp())
    reference = reference.expand(batch) if batch else reference
    value, expected = fast.log_prob(z), reference.log_prob(z.double())
    assert value.dtype == torch.float32 and value.shape == expected.shape
    torch.testing.assert_close(value.double(), expected, atol=2e-4, rtol=1e-5)
    inputs = [logits, locs, log_scales, z]
    for a, b in zip(torch.autograd.grad(value.sum(), inputs), torch.autograd.grad(expected.sum(), inputs)):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)
    with torch.no_grad():  # an evaluation's path (in place; the expansion kept for the next call)
        for _ in range(2):
            torch.testing.assert_close(fast.log_prob(z), value.detach())
    held = gaussian_mixture(logits.detach(), locs.detach(), log_scales.detach().exp())  # no gradient: kept
    held = held.expand(batch) if batch else held
    for shift in (0.0, 0.5):  # the kept expansion serves other codes alike
        torch.testing.assert_close(held.log_prob(z.detach() + shift).double(), reference.log_prob(z.double() + shift),
                                   atol=2e-4, rtol=1e-5)


def test_a_mixture_whose_components_differ_across_the_batch_is_torchs_own():
    torch.manual_seed(1)
    locs, scales = torch.randn(4, 3, 2), torch.rand(4, 3, 2) + 0.5
    mixture = DiagonalGaussianMixture(dist.Categorical(logits=torch.zeros(4, 3)), dist.Normal(locs, scales).to_event(1))
    z = torch.randn(5, 4, 2)
    torch.testing.assert_close(mixture.log_prob(z), dist.MixtureSameFamily.log_prob(mixture, z))


def _counted_vamp(num_pseudo_inputs=6):
    torch.manual_seed(2)
    vae = VAE((10,), 3, prior={"name": "vamp", "num_pseudo_inputs": num_pseudo_inputs},
              encoder={"name": "mlp", "hidden": [8]}, decoder={"name": "mlp", "hidden": [8]})
    passes = []
    vae.encoder.register_forward_hook(lambda module, args, out: passes.append(args[0].shape[0]))
    return vae, passes


def test_the_log_likelihood_runs_the_pseudo_inputs_through_the_encoder_once(monkeypatch):
    vae, passes = _counted_vamp()
    x = (torch.rand(30, 10) > 0.5).float()
    held = pyrovae.log_likelihood(vae, x, num_samples=40, batch_size=10, max_elements=200)
    assert passes.count(6) == 1 and passes.count(10) == 3  # the prior once; each batch of points once
    # the same numbers as with p(z) computed afresh for every chunk of samples
    import pyrovae.infer.evaluate as evaluate

    monkeypatch.setattr(evaluate, "priors_held", lambda model: contextlib.nullcontext())
    passes.clear()
    fresh = pyrovae.log_likelihood(vae, x, num_samples=40, batch_size=10, max_elements=200)
    assert passes.count(6) == 3 * 40  # one sample per chunk here (max_elements), 40 chunks per batch
    torch.testing.assert_close(fresh, held)


def test_a_held_prior_computes_afresh_with_gradients_on_and_after_the_evaluation():
    vae, passes = _counted_vamp()
    z = torch.randn(4, 3)
    with priors_held(vae):
        with torch.no_grad():
            first = vae.prior.log_prob(z)
            vae.prior.log_prob(z)
        assert passes == [6]
        with_grad = vae.prior.log_prob(z)  # a training step inside would see the live parameters
        assert with_grad.requires_grad and passes == [6, 6]
    with torch.no_grad():
        vae.prior.pseudo_inputs.add_(1.0)
        assert not torch.allclose(vae.prior.log_prob(z), first)
    assert passes == [6, 6, 6]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 784, 2005])
def test_the_sum_of_log_sigmoids_is_torchs_in_value_and_gradient(n, dtype):
    """Products of 64 factors before each log, a remainder of n mod 64, and one log a factor where a
    product would lose its digits (bfloat16); values from -120 to 120 and around 0."""
    from pyrovae.parts.likelihoods import sum_log_sigmoid

    torch.manual_seed(n)
    spread = torch.cat([torch.linspace(-120, 120, 2001), torch.tensor([0.0, -0.0, 1e-8, -1e-8])])
    t = torch.stack([spread[torch.randperm(spread.numel())[:n]], 4 * torch.randn(n), 0.01 * torch.randn(n)])
    t = t.to(dtype).requires_grad_()
    value = sum_log_sigmoid(t)
    expected = torch.nn.functional.logsigmoid(t.double()).sum(-1)
    assert value.dtype == dtype and value.shape == (3,)
    tolerance = {torch.float32: 2e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(value.double(), expected, atol=tolerance * n, rtol=tolerance)
    (grad,) = torch.autograd.grad(value.sum(), t)
    (expected_grad,) = torch.autograd.grad(expected.sum(), t)
    # sigmoid(-t): 1/2 at 0, as torch's
    torch.testing.assert_close(grad.double(), expected_grad.double(), atol=tolerance, rtol=tolerance)


def test_the_bernoulli_log_density_is_x_l_minus_softplus_l_in_value_and_gradient():
    """sum log sigmoid((2x - 1) l) against the textbook sum x l - softplus(l), for the logits and for x."""
    from pyrovae.parts.likelihoods import BernoulliLikelihood

    torch.manual_seed(3)
    logits = (8 * torch.randn(3, 5, 4, 4)).requires_grad_()
    x = (torch.rand(5, 4, 4) > 0.5).float().requires_grad_()
    value = BernoulliLikelihood().log_prob((logits,), x, 2)
    expected = (x * logits - torch.nn.functional.softplus(logits)).flatten(-2).sum(-1)
    torch.testing.assert_close(value, expected, atol=1e-4, rtol=1e-6)
    grads = torch.autograd.grad(value.sum(), [logits, x])
    for a, b in zip(grads, torch.autograd.grad(expected.sum(), [logits, x])):
        torch.testing.assert_close(a, b)


def test_a_training_step_runs_the_pseudo_inputs_through_the_encoder_once_whatever_the_particles():
    vae, passes = _counted_vamp()
    x = (torch.rand(9, 10) > 0.5).float()
    for particles in (1, 5):
        passes.clear()
        vae.terms(x, particles).elbo.mean().backward()
        assert sorted(passes) == [6, 9]  # the pseudo-inputs once, the batch once
