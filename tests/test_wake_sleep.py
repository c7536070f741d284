"""Wake-sleep (Hinton et al. 1995): each phase's loss and gradients, the sleep phase's fixed
point on a linear-Gaussian model (the exact posterior's moments), and training by name."""

import math

import pyro
import pytest
import torch
from conftest import LinearDecoder, binary_batch
from pyro.infer import SVI
from torch import nn

from pyrovae import VAE, ConfigError, TrainConfig, WakeSleep, fit, load_dataset
from pyrovae.app.run_record import run_difference


def small_vae(**kw):
    return VAE((1, 8, 8), latent_dim=3, encoder={"name": "mlp", "hidden": [16]},
               decoder={"name": "mlp", "hidden": [16]}, **kw)


def grads(module):
    return [p.grad for p in module.parameters()]


def test_wake_loss_is_minus_scaled_log_joint_at_posterior_samples():
    vae, x, n = small_vae(), binary_batch(16), 160
    pyro.set_rng_seed(3)
    loss = WakeSleep().wake_loss(vae.model, vae.guide, x, n)
    pyro.set_rng_seed(3)
    with torch.no_grad():
        z = vae.posterior(x).sample()
        expected = -(n / 16) * (vae.prior().log_prob(z) + vae.likelihood_dist(z).log_prob(x)).sum()
    assert torch.allclose(loss, expected, rtol=1e-5)


def test_wake_updates_only_the_model_and_sleep_only_the_guide():
    vae, x = small_vae(), binary_batch(16)
    WakeSleep().wake_loss(vae.model, vae.guide, x, 100).backward()
    assert all(g is None for g in grads(vae.encoder))
    assert all(g is not None and g.abs().sum() > 0 for g in grads(vae.decoder))
    vae.zero_grad(set_to_none=True)
    WakeSleep().sleep_loss(vae.model, vae.guide, x, 100).backward()
    assert all(g is None for g in grads(vae.decoder))
    assert all(g is not None and g.abs().sum() > 0 for g in grads(vae.encoder))


def test_sleep_loss_scores_the_guide_on_dreams_from_the_prior_and_decoder():
    vae, x, n = small_vae(), binary_batch(2000), 4000
    ws = WakeSleep()
    pyro.set_rng_seed(5)
    dream = ws.dream(vae.model, x, n)
    z, x_dream = dream.nodes["z"]["value"], dream.nodes["x"]["value"]
    assert x_dream.shape == x.shape and set(x_dream.unique().tolist()) <= {0.0, 1.0}
    # z ~ N(0, I): mean 0 and variance 1 within a few standard errors
    assert z.mean(0).abs().max() < 4 / math.sqrt(2000) and (z.var(0) - 1).abs().max() < 0.15
    pyro.set_rng_seed(5)
    loss = ws.sleep_loss(vae.model, vae.guide, x, n)
    expected = -(n / 2000) * vae.posterior(x_dream).log_prob(z).sum()
    assert torch.allclose(loss, expected, rtol=1e-5)


class LinearEncoder(nn.Module):
    def __init__(self, dim, latent):
        super().__init__()
        self.linear = nn.Linear(dim, latent)
        self.log_var = nn.Parameter(torch.zeros(latent))

    def forward(self, x):
        loc = self.linear(x)
        return loc, self.log_var.expand_as(loc)


def test_sleep_phase_converges_to_the_exact_posterior_moments():
    """For z ~ N(0, I), x = W z + b + N(0, s^2 I), the sleep phase minimises E_p(x) KL(p(z|x) || q(z|x)):
    a linear encoder with a diagonal variance reaches the posterior mean A (x - b) and the
    diagonal of the posterior covariance (the forward KL matches moments)."""
    torch.manual_seed(0)
    latent, dim, s = 2, 5, 0.5
    w, b = torch.randn(dim, latent), torch.randn(dim)
    vae = VAE((dim,), latent, likelihood={"name": "gaussian", "scale": s},
              encoder=LinearEncoder(dim, latent), decoder=LinearDecoder(w, b))
    cov = torch.linalg.inv(w.T @ w / s**2 + torch.eye(latent))
    a = cov @ w.T / s**2
    ws = WakeSleep()
    optimizer = torch.optim.Adam(vae.encoder.parameters(), lr=0.02)
    x = torch.zeros(500, dim)  # only its shape matters to the sleep phase
    for _ in range(1500):
        optimizer.zero_grad()
        (ws.sleep_loss(vae.model, vae.guide, x, 500) / 500).backward()
        optimizer.step()
    assert torch.allclose(vae.encoder.linear.weight, a, atol=0.03)
    assert torch.allclose(vae.encoder.linear.bias, -a @ b, atol=0.05)
    assert torch.allclose(vae.encoder.log_var.exp(), torch.diagonal(cov), rtol=0.1)


def test_wake_sleep_trains_with_plain_svi():
    vae, x = small_vae(), binary_batch(32)
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), WakeSleep())
    before = [p.detach().clone() for p in vae.parameters()]
    loss = svi.step(x, num_data=32)
    assert math.isfinite(loss)
    assert all(not torch.equal(p, q) for p, q in zip(before, vae.parameters()))


@pytest.mark.filterwarnings("ignore::pyrovae.PosteriorCollapseWarning")  # three epochs wake few units
def test_fit_by_name_reports_the_recognition_models_elbo():
    data = load_dataset("digits")
    vae = small_vae()
    metrics = fit(vae, data, epochs=3, algorithm="wake_sleep", progress=False, eval_every=1,
                  optim={"name": "adagrad", "lr": 0.05})
    assert all(r["train_objective"] == r["train_elbo"] for r in metrics)
    assert metrics[-1]["test_elbo"] > metrics[0]["test_elbo"]
    assert all(math.isfinite(r["train_elbo"]) for r in metrics)


@pytest.mark.parametrize("change", [{"beta": 0.5}, {"kl_warmup_epochs": 2}, {"num_particles": 2},
                                    {"algorithm": "sleep"}])
def test_config_refuses_what_wake_sleep_has_no_use_for(change):
    with pytest.raises(ConfigError, match="algorithm"):
        TrainConfig(**{"algorithm": "wake_sleep", **change}).check()


def test_vamp_prior_is_refused():
    data = load_dataset("digits")
    with pytest.raises(ConfigError, match="vamp"):
        fit(small_vae(prior={"name": "vamp", "num_pseudo_inputs": 4}), data, epochs=1, algorithm="wake_sleep",
            progress=False)


def test_resume_tells_the_algorithms_apart_and_old_checkpoints_mean_aevb():
    old = {"data": {}, "model": {}, "train": {"batch_size": 100}, "optim": {"name": "adam"}}
    new = {"data": {}, "model": {}, "train": {"batch_size": 100, "algorithm": "aevb"}, "optim": {"name": "adam"}}
    assert run_difference(old, new) is None
    assert run_difference(old, {**new, "train": {"batch_size": 100, "algorithm": "wake_sleep"}}) == "train.algorithm"

