"""pyrovae's estimators are Pyro ELBOs: each trains a VAE in plain pyro.infer.SVI, agrees with the
trainer's loss on a pyrovae model, and with Pyro's own ELBO on any Pyro model and guide."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

import pyrovae
from pyrovae import ESTIMATORS, VAE, TrainConfig
from pyrovae.infer.algorithms import build_algorithm

N = 500


def batch(m=16, seed=0):
    return (torch.rand(m, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


@pytest.mark.parametrize("name, particles", [("analytic", 1), ("mc", 1), ("mc", 3), ("iwae", 4)])
def test_an_estimators_loss_in_plain_pyro_is_the_trainers(name, particles):
    vae = VAE((1, 8, 8), 3)
    x = batch()
    elbo = ESTIMATORS.build({"name": name, "num_particles": particles})
    assert isinstance(elbo, pyro.infer.ELBO)
    trainer = build_algorithm(vae, TrainConfig(estimator=name, num_particles=particles), name, N)
    losses = []
    for compute in (lambda: elbo.differentiable_loss(vae.model, vae.guide, x, N) / N,
                    lambda: trainer.loss(pyrovae.Batch(x), None, 1.0, len(x)).loss):
        pyro.set_rng_seed(1)
        loss = compute()
        grads = torch.autograd.grad(loss, list(vae.parameters()))
        losses.append((loss.detach(), grads))
    torch.testing.assert_close(losses[0][0], losses[1][0])
    for a, b in zip(losses[0][1], losses[1][1]):
        torch.testing.assert_close(a, b)


def test_an_estimator_trains_a_vae_in_plain_svi_with_num_data_as_the_model_takes_it():
    vae = VAE((1, 8, 8), 2, name="plain_svi")
    x = batch(64)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), ESTIMATORS.build("analytic"))
    losses = [svi.step(x, num_data=640) for _ in range(60)]
    assert sum(losses[-10:]) < sum(losses[:10])


def test_on_any_pyro_model_an_estimator_is_pyros_elbo():
    """A model and guide that are plain functions: the estimators read the traces, and equal
    Pyro's Trace_ELBO (mc) and TraceMeanField_ELBO (analytic) at the same draws."""
    loc_q = torch.nn.Parameter(torch.zeros(5, 2))

    def model(x, num_data=None):
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)

    def guide(x, num_data=None):
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            pyro.sample("z", dist.Normal(loc_q, 0.5).to_event(1))

    x = torch.randn(5)
    for name, theirs in (("mc", Trace_ELBO()), ("analytic", TraceMeanField_ELBO())):
        values = []
        for elbo in (ESTIMATORS.build(name), theirs):
            pyro.set_rng_seed(2)
            values.append(elbo.differentiable_loss(model, guide, x, 50))
        torch.testing.assert_close(values[0], values[1])
