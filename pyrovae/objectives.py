"""Estimators of the ELBO, by name: the paper's two SGVB estimators as Pyro ELBOs.

For one datapoint, the evidence lower bound (Kingma & Welling 2014, eq. 3) is

    L(theta, phi; x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))  <=  log p(x).

- ``mc`` (estimator A, eq. 6): (1/L) sum_l [log p(x, z_l) - log q(z_l|x)],
  z_l = mu + sigma * eps_l: Pyro's :class:`~pyro.infer.Trace_ELBO`.
- ``analytic`` (estimator B, eq. 7): -KL(q || p) in closed form plus
  (1/L) sum_l log p(x|z_l), with less variance: Pyro's :class:`~pyro.infer.TraceMeanField_ELBO`.
- ``auto``: ``analytic`` when the prior's KL has a closed form, else ``mc``.

L = ``num_particles`` samples are drawn in one vectorized pass.
"""

import pyro.infer
import torch
from torch.distributions import kl_divergence

from .errors import ConfigError

ESTIMATORS = ("auto", "analytic", "mc")


def resolve_estimator(estimator: str, vae) -> str:
    """``auto`` -> ``analytic`` or ``mc`` for this VAE's prior; checks that ``analytic`` applies."""
    if estimator not in ESTIMATORS:
        raise ConfigError(f"train.estimator: unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    analytic_ok = getattr(vae.prior, "has_analytic_kl", False)
    if estimator == "auto":
        return "analytic" if analytic_ok else "mc"
    if estimator == "analytic" and not analytic_ok:
        raise ConfigError(f"train.estimator = 'analytic': the {type(vae.prior).__name__} has no closed-form KL; "
                          "use 'mc' or 'auto'")
    return estimator


def make_elbo(estimator: str, vae, num_particles: int = 1) -> pyro.infer.ELBO:
    """The Pyro ELBO for an estimator name (after :func:`resolve_estimator`)."""
    if num_particles < 1:
        raise ConfigError(f"train.num_particles = {num_particles}: must be >= 1")
    cls = {"analytic": pyro.infer.TraceMeanField_ELBO, "mc": pyro.infer.Trace_ELBO}[resolve_estimator(estimator, vae)]
    # The VAE has exactly one plate, so the particle plate goes at dim -2 without a guessing trace.
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)


def elbo_per_datapoint(vae, x: torch.Tensor, num_particles: int = 1, analytic_kl: bool = None) -> torch.Tensor:
    """The ELBO of each datapoint of x (shape ``(M,)``, nats), computed with plain tensors.

    The same quantity as the Pyro ELBOs above, without the N/M scale:
    with ``analytic_kl``, (1/L) sum_l log p(x|z_l) - KL(q || p) (estimator B); otherwise
    (1/L) sum_l [log p(x|z_l) + log p(z_l) - log q(z_l|x)] (estimator A).
    ``analytic_kl=None`` uses the closed form when the prior has one.
    """
    if analytic_kl is None:
        analytic_kl = getattr(vae.prior, "has_analytic_kl", False)
    q = vae.posterior(x)
    z = q.rsample((num_particles,))
    log_px = vae.likelihood_dist(z).log_prob(x).mean(0)
    if analytic_kl:
        return log_px - kl_divergence(q, vae.prior((x.shape[0],)))
    return log_px + (vae.prior().log_prob(z) - q.log_prob(z)).mean(0)
