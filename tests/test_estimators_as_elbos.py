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


class CountingEncoder(torch.nn.Module):
    """The vae's encoder, counting its forward passes."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


BUILT = {("pyro", "mc"): "Trace_ELBO", ("pyro", "analytic"): "TraceMeanField_ELBO", ("pyro", "iwae"): "IWAE",
         ("torch", "mc"): "MonteCarlo", ("torch", "analytic"): "Analytic", ("torch", "iwae"): "ImportanceWeighted"}


@pytest.mark.parametrize("engine, estimator, beta", [(*key, beta) for key in BUILT for beta in (1.0, 0.3, 0.0)
                                                     if key[1] != "iwae" or beta == 1.0])  # iwae takes beta = 1
def test_the_trainer_reads_any_elbo_in_one_pass_and_reports_the_elbo_at_beta_one(engine, estimator, beta):
    """The engine is which ELBO object is built; one forward pass gives the objective at beta and
    the ELBO, which equals the ELBO at beta = 1 of the same draws, in value (Pyro's classes: by the
    loss's linearity in beta, one backward step through the scales)."""
    vae = VAE((1, 8, 8), 3)
    vae.encoder = CountingEncoder(vae.encoder)
    cfg = TrainConfig(engine=engine, estimator=estimator, num_particles=2 if estimator == "iwae" else 1)
    algorithm = build_algorithm(vae, cfg, estimator, N)
    x = pyrovae.Batch(batch())
    algorithm.dry_run([x])
    assert type(algorithm.elbo).__name__ == BUILT[engine, estimator] and isinstance(algorithm.elbo, pyro.infer.ELBO)
    assert algorithm.draws_noise == (engine == "torch")
    steps = []
    for b in (beta, 1.0):
        pyro.set_rng_seed(5)
        vae.encoder.calls = 0
        steps.append(algorithm.loss(x, None, b, len(x)))
        assert vae.encoder.calls == 1  # one pass, also for the reported ELBO
    at_beta, at_one = steps
    torch.testing.assert_close(at_beta.elbo_sum, at_one.elbo_sum)
    if estimator != "iwae":  # at beta = 1 the ELBO is what is maximised
        torch.testing.assert_close(at_one.elbo_sum, at_one.objective_sum)
    if beta != 1.0:  # the objective is not the ELBO: the KL counts beta
        assert float(at_beta.objective_sum) != pytest.approx(float(at_one.objective_sum))


@pytest.mark.parametrize("beta", [0.3, 0.0])
def test_the_pyro_engines_gradient_at_beta_is_latent_scales(beta):
    """beta as a leaf tensor (for the reported ELBO) gives the gradient of LatentScale(beta) as a number."""
    vae = VAE((1, 8, 8), 3)
    algorithm = build_algorithm(vae, TrainConfig(engine="pyro", estimator="mc"), "mc", N)
    x = pyrovae.Batch(batch())
    algorithm.dry_run([x])
    pyro.set_rng_seed(3)
    ours = torch.autograd.grad(algorithm.loss(x, None, beta, len(x)).loss, list(vae.parameters()))
    pyro.set_rng_seed(3)
    with pyrovae.LatentScale(beta):
        loss = algorithm.elbo.differentiable_loss(vae.model, vae.guide, x, N) / N
    theirs = torch.autograd.grad(loss, list(vae.parameters()))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_a_users_estimator_trains_under_either_engine_with_the_same_numbers():
    """A registered estimator without a Pyro class of its own runs under engine = 'pyro' over the
    traces (it was refused before), equal to its run over the vae's closed forms at the same draws."""

    @ESTIMATORS.register("half_kl_test")
    class HalfKL(pyrovae.Estimator):
        def __call__(self, terms, beta=1.0):
            objective = terms.reconstruction.mean(0) - 0.5 * beta * terms.sampled_kl.mean(0)
            return objective, terms.elbo.mean(0)

    try:
        vae = VAE((1, 8, 8), 3)
        x = pyrovae.Batch(batch())
        losses = []
        for engine in ("torch", "pyro"):
            algorithm = build_algorithm(vae, TrainConfig(engine=engine, estimator="half_kl_test"), "half_kl_test", N)
            algorithm.dry_run([x])
            assert isinstance(algorithm.elbo, HalfKL) and algorithm.elbo.from_traces == (engine == "pyro")
            pyro.set_rng_seed(4)  # the guide's Normal draws z = loc + scale * eps, eps as here
            eps = dist.Normal(torch.zeros(len(x), 3), 1.0).rsample().unsqueeze(0) if algorithm.draws_noise else None
            step = algorithm.loss(x, eps, 1.0, len(x))
            losses.append((step.loss, step.elbo_sum))
        torch.testing.assert_close(losses[0][0], losses[1][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(losses[0][1], losses[1][1], rtol=1e-4, atol=1e-4)
    finally:
        ESTIMATORS._entries.pop("half_kl_test")
