"""The VAE's model and guide: minibatch scaling, closed forms, and use with plain Pyro SVI."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import binary_batch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch.nn import functional as F

from pyrovae import VAE, elbo_per_datapoint


@torch.no_grad()
def hand_elbo_terms(vae, x, z):
    """log p(x|z), the closed-form KL and log p(z) - log q(z|x), written out by hand for a
    Bernoulli decoder and an N(0, I) prior (Kingma & Welling 2014, App. B and C.1)."""
    loc, log_var = vae.encoder(x)
    logits = vae.decoder(z)[..., 0, :, :, :]
    log_px = (x * logits - F.softplus(logits)).sum((-3, -2, -1))
    kl = 0.5 * (loc**2 + log_var.exp() - 1 - log_var).sum(-1)
    log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_qz = (-0.5 * (z - loc) ** 2 / log_var.exp() - 0.5 * log_var - 0.5 * math.log(2 * math.pi)).sum(-1)
    return log_px, kl, log_pz - log_qz


@pytest.mark.parametrize("num_data", [None, 16, 1000])
def test_minibatch_loss_is_n_over_m_times_batch_sum(num_data):
    vae = VAE((1, 8, 8), latent_dim=3)
    x = binary_batch(16)
    m, n = x.shape[0], num_data or x.shape[0]

    pyro.set_rng_seed(1)
    z = poutine.trace(vae.guide).get_trace(x, num_data).nodes["z"]["value"]
    log_px, kl, log_pz_over_qz = hand_elbo_terms(vae, x, z)

    pyro.set_rng_seed(1)
    analytic = TraceMeanField_ELBO().loss(vae.model, vae.guide, x, num_data)
    pyro.set_rng_seed(1)
    mc = Trace_ELBO().loss(vae.model, vae.guide, x, num_data)

    assert analytic == pytest.approx(-(n / m) * float((log_px - kl).sum()), rel=1e-5)
    assert mc == pytest.approx(-(n / m) * float((log_px + log_pz_over_qz).sum()), rel=1e-5)


def test_vectorized_particles_match_per_datapoint_elbo():
    vae = VAE((1, 8, 8), latent_dim=3)
    x = binary_batch(8)
    for cls, analytic in ((TraceMeanField_ELBO, True), (Trace_ELBO, False)):
        pyro.set_rng_seed(2)
        loss = cls(num_particles=5, vectorize_particles=True, max_plate_nesting=1).loss(vae.model, vae.guide, x, 80)
        pyro.set_rng_seed(2)
        direct = elbo_per_datapoint(vae, x, num_particles=5, analytic_kl=analytic).detach()
        assert loss == pytest.approx(-10 * float(direct.sum()), rel=1e-5)


def test_reparameterized_gradients_reach_encoder_and_decoder():
    vae = VAE((1, 8, 8), latent_dim=2)
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, binary_batch(), 100)
    loss.backward()
    for name, p in vae.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_plain_pyro_svi_trains_with_any_prior_and_likelihood():
    x = binary_batch(32)
    for prior, likelihood in (("gaussian", "bernoulli"), ({"name": "mixture", "num_components": 3}, "bernoulli"),
                              ("standard_normal", "continuous_bernoulli")):
        pyro.clear_param_store()
        vae = VAE((1, 8, 8), latent_dim=2, prior=prior, likelihood=likelihood, name="vae")
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        losses = [svi.step(x, num_data=320) for _ in range(60)]
        assert sum(losses[-10:]) < sum(losses[:10])
        names = set(pyro.get_param_store().keys())
        assert any(n.startswith("vae.encoder") for n in names) and any(n.startswith("vae.decoder") for n in names)
        if prior != "standard_normal":
            assert any(n.startswith("vae.prior") for n in names)


def test_guide_is_diagonal_gaussian_with_log_variance():
    vae = VAE((1, 8, 8), latent_dim=4)
    x = binary_batch(5)
    loc, log_var = vae.encoder(x)
    q = vae.posterior(x)
    assert isinstance(q, dist.Independent) and q.event_shape == (4,) and q.batch_shape == (5,)
    torch.testing.assert_close(q.base_dist.scale, torch.exp(0.5 * log_var))
    torch.testing.assert_close(q.mean, loc)


def test_sample_and_reconstruct_shapes():
    vae = VAE((1, 8, 8), latent_dim=2)
    assert vae.sample(7).shape == (7, 1, 8, 8)
    assert set(vae.sample(7, mean=False).unique().tolist()) <= {0.0, 1.0}
    assert vae.reconstruct(binary_batch(3)).shape == (3, 1, 8, 8)
