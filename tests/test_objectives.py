"""The training loop's direct loss equals Pyro's ELBOs on the model and guide, in value and gradient."""

import pyro
import pytest
import torch
from conftest import binary_batch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyrovae import IWAE, VAE, LatentScale, objective_per_datapoint

GAUSSIAN = {"name": "gaussian", "learn_scale": True}
CASES = [
    ("analytic", 1, 1.0, "standard_normal", TraceMeanField_ELBO, GAUSSIAN),
    ("analytic", 1, 1.0, "standard_normal", TraceMeanField_ELBO, "bernoulli"),
    ("analytic", 4, 0.3, "gaussian", TraceMeanField_ELBO, GAUSSIAN),
    ("mc", 1, 1.0, "standard_normal", Trace_ELBO, GAUSSIAN),
    ("mc", 2, 0.5, "standard_normal", Trace_ELBO, "bernoulli"),
    ("mc", 3, 2.0, {"name": "mixture", "num_components": 3}, Trace_ELBO, GAUSSIAN),
    ("mc", 2, 1.0, {"name": "vamp", "num_pseudo_inputs": 5}, Trace_ELBO, GAUSSIAN),
    ("iwae", 5, 1.0, "standard_normal", IWAE, GAUSSIAN),
    ("iwae", 3, 1.0, "gaussian", IWAE, "bernoulli"),
]


@pytest.mark.parametrize("estimator, particles, beta, prior, elbo_cls, likelihood", CASES,
                         ids=lambda v: str(v)[:20])
def test_direct_loss_and_gradients_equal_pyros(estimator, particles, beta, prior, elbo_cls, likelihood):
    vae = VAE((1, 8, 8), 3, prior=prior, likelihood=likelihood)
    x = binary_batch(12)
    n = 600
    vectorize = {"vectorize_particles": particles > 1} if elbo_cls is not IWAE else {}
    elbo = elbo_cls(num_particles=particles, max_plate_nesting=1, **vectorize)

    pyro.set_rng_seed(7)
    with LatentScale(beta):
        pyro_loss = elbo.differentiable_loss(vae.model, vae.guide, x, n) / n
    pyro_grads = torch.autograd.grad(pyro_loss, list(vae.parameters()))

    pyro.set_rng_seed(7)
    objective, _ = objective_per_datapoint(vae, x, estimator, particles, beta)
    direct_loss = -objective.mean()
    direct_grads = torch.autograd.grad(direct_loss, list(vae.parameters()))

    torch.testing.assert_close(direct_loss, pyro_loss, rtol=1e-5, atol=1e-5)
    for (name, _), a, b in zip(vae.named_parameters(), direct_grads, pyro_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_given_noise_is_the_reparameterization():
    vae = VAE((1, 8, 8), 3)
    x = binary_batch(6)
    pyro.set_rng_seed(3)
    drawn = objective_per_datapoint(vae, x, "mc", 4)
    pyro.set_rng_seed(3)
    eps = torch.randn(4, 6, 3)  # what rsample draws
    given = objective_per_datapoint(vae, x, "mc", 4, noise=eps)
    for a, b in zip(drawn, given):
        torch.testing.assert_close(a, b)


def test_both_engines_train_alike():
    """The engines draw their noise differently (the torch engine from the loop's own
    generator), so they agree in distribution, not bit for bit."""
    from pyrovae import fit, load_dataset

    data = load_dataset("digits")
    final = []
    for engine in ("torch", "pyro"):
        torch.manual_seed(0)
        vae = VAE(data.event_shape, 2)
        final.append(fit(vae, data, epochs=4, engine=engine, progress=False)[-1]["test_elbo"])
    assert abs(final[0] - final[1]) < 1.0, final
