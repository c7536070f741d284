"""Estimators of the ELBO, by name: the paper's two SGVB estimators as Pyro ELBOs.

For one datapoint, the evidence lower bound (Kingma & Welling 2014, eq. 3) is

    L(theta, phi; x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))  <=  log p(x).

- ``mc`` (estimator A, eq. 6): (1/L) sum_l [log p(x, z_l) - log q(z_l|x)],
  z_l = mu + sigma * eps_l: Pyro's :class:`~pyro.infer.Trace_ELBO`.
- ``analytic`` (estimator B, eq. 7): -KL(q || p) in closed form plus
  (1/L) sum_l log p(x|z_l), with less variance: Pyro's :class:`~pyro.infer.TraceMeanField_ELBO`.
- ``auto``: ``analytic`` when the prior's KL has a closed form, else ``mc``.
- ``iwae``: the importance-weighted bound with k = ``num_particles`` (Burda et al. 2015),
  :class:`IWAE` below, a tighter bound: ELBO <= IWAE_k <= IWAE_{k+1} <= log p(x).

L = ``num_particles`` samples are drawn in one vectorized pass.
"""

import math

import pyro.infer
import torch
from pyro.infer.enum import get_importance_trace
from pyro.util import warn_if_nan
from torch.distributions import kl_divergence

from .errors import ConfigError, shown
from .priors import LOG_2PI

ESTIMATORS = ("auto", "analytic", "mc", "iwae")


def resolve_estimator(estimator: str, vae) -> str:
    """``auto`` -> ``analytic`` or ``mc`` for this VAE's prior; checks that ``analytic`` applies."""
    if estimator not in ESTIMATORS:
        raise ConfigError(f"train.estimator: unknown estimator {shown(estimator)}; valid: {', '.join(ESTIMATORS)}")
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
    estimator = resolve_estimator(estimator, vae)
    # The VAE has exactly one plate, so the particle plate goes at dim -2 without a guessing trace.
    if estimator == "iwae":
        return IWAE(num_particles=num_particles, max_plate_nesting=1)
    cls = {"analytic": pyro.infer.TraceMeanField_ELBO, "mc": pyro.infer.Trace_ELBO}[estimator]
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)


def objective_per_datapoint(vae, x: torch.Tensor, estimator: str = "analytic", num_particles: int = 1,
                            kl_weight: float = 1.0, eps: torch.Tensor = None):
    """``(objective, elbo)``, each of shape ``(M,)``: what an estimator maximises for each
    datapoint of x, and the ELBO estimate from the same samples, computed with plain tensors.

    With z_l = mu(x) + sigma(x) * eps_l, l = 1..L, and beta = ``kl_weight``:

    - ``analytic`` (estimator B): (1/L) sum_l log p(x|z_l) - beta KL(q(z|x) || p(z));
    - ``mc`` (estimator A): (1/L) sum_l [log p(x|z_l) + beta (log p(z_l) - log q(z_l|x))];
    - ``iwae``: log (1/L) sum_l p(x, z_l) / q(z_l|x) (beta must be 1).

    These are the quantities whose minibatch sums, scaled by N/M, Pyro's
    ``TraceMeanField_ELBO``, ``Trace_ELBO`` and :class:`IWAE` compute on ``vae.model`` and
    ``vae.guide``; drawing the same noise, values and gradients agree
    (``tests/test_objectives.py``). The training loop uses this direct form: it skips Pyro's
    tracing, which costs more than the networks on small models.

    ``eps`` (shape ``(L, M, latent_dim)``), if given, is the standard normal noise to use
    instead of drawing it: the training loop draws it for the whole global batch from its own
    generator, so that a run sharded over several processes sees the same noise as one process.
    """
    loc, log_var = vae.encoder(x)
    if eps is None:
        eps = torch.randn((num_particles, *loc.shape), dtype=loc.dtype, device=loc.device)
    z = loc + eps * torch.exp(0.5 * log_var)  # the reparameterization, (L, M, latent_dim)
    log_px = vae.likelihood.log_prob(vae.decode(z), x, vae.event_dim)  # (L, M)
    if estimator == "analytic":
        reconstruction = log_px.mean(0)
        kl = vae.prior.kl_from_normal(loc, log_var)
        elbo = reconstruction - kl
        return (elbo if kl_weight == 1.0 else reconstruction - kl_weight * kl), elbo
    # log q(z|x) at z = mu + sigma * eps is, as a function of phi, sum_j -eps_j^2 / 2 - log sigma_j
    # - log(2 pi) / 2: the same value and the same total gradient as q.log_prob(z).
    log_q = -0.5 * (eps.pow(2) + log_var + LOG_2PI).sum(-1)
    log_ratio = vae.prior.log_prob(z) - log_q  # log p(z) - log q(z|x), (L, M)
    elbo = (log_px + log_ratio).mean(0)
    if estimator == "mc":
        return (elbo if kl_weight == 1.0 else (log_px + kl_weight * log_ratio).mean(0)), elbo
    if estimator == "iwae":
        return torch.logsumexp(log_px + log_ratio, 0) - math.log(num_particles), elbo
    raise ValueError(f"unknown estimator {shown(estimator)}")


def elbo_terms(vae, x: torch.Tensor, num_particles: int = 1, analytic_kl: bool = None):
    """``(reconstruction, kl)`` for each datapoint of x (each of shape ``(M,)``, nats): the two
    terms of the ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) (Kingma & Welling 2014, eq. 3).

    The reconstruction term is (1/L) sum_l log p(x|z_l); the KL is the closed form with
    ``analytic_kl`` (estimator B), else (1/L) sum_l [log q(z_l|x) - log p(z_l)] (estimator A).
    ``analytic_kl=None`` uses the closed form when the prior has one.
    """
    if analytic_kl is None:
        analytic_kl = getattr(vae.prior, "has_analytic_kl", False)
    q = vae.posterior(x)
    z = q.rsample((num_particles,))
    reconstruction = vae.likelihood_dist(z).log_prob(x).mean(0)
    if analytic_kl:
        return reconstruction, kl_divergence(q, vae.prior())
    return reconstruction, (q.log_prob(z) - vae.prior().log_prob(z)).mean(0)


def elbo_per_datapoint(vae, x: torch.Tensor, num_particles: int = 1, analytic_kl: bool = None) -> torch.Tensor:
    """The ELBO of each datapoint of x (shape ``(M,)``, nats), computed with plain tensors.

    The same quantity as the Pyro ELBOs above, without the N/M scale (see :func:`elbo_terms`).
    """
    reconstruction, kl = elbo_terms(vae, x, num_particles, analytic_kl)
    return reconstruction - kl


_PARTICLE_PLATE = "num_particles_vectorized"  # the plate Pyro's ELBO adds for vectorized particles


class IWAE(pyro.infer.ELBO):
    """The importance-weighted bound (Burda et al. 2015) as a Pyro ELBO that stays correct
    under minibatches.

    For each datapoint x_i of the plate ``data_plate``, with z_{i,j} ~ q(z | x_i), j = 1..k:

        IWAE_k(x_i) = log (1/k) sum_j p(x_i, z_{i,j}) / q(z_{i,j} | x_i),

    and the loss of a minibatch of M points out of N is ``-(N/M) sum_i IWAE_k(x_i)``. Pyro's
    ``RenyiELBO(alpha=0)`` applies the N/M scale to the log-weights before the log-sum-exp,
    computing sum_i log (1/k) sum_j w_ij^(N/M), which is wrong under plate subsampling
    (``tests/test_evaluate.py`` shows both); here the log-sum-exp runs over each datapoint's
    own k unscaled weights and the scale is applied after it. k = 1 is estimator A.

    Every latent site must be local (inside the data plate) and reparameterized.

    :param int num_particles: k, drawn in one vectorized pass.
    :param str data_plate: the name of the plate whose entries are datapoints.
    :param int max_plate_nesting: as in Pyro's ELBOs (guessed by a trace when not given).

    [1] "Importance Weighted Autoencoders", Yuri Burda, Roger Grosse, Ruslan Salakhutdinov (2015)
    """

    def __init__(self, num_particles: int = 10, data_plate: str = "data", max_plate_nesting: float = float("inf")):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=True)
        self.data_plate = data_plate

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def log_weights(self, model, guide, *args, **kwargs):
        """``(log_w, scale)``: log p(x_i, z_ij) - log q(z_ij | x_i) of shape ``(k, M)`` and N/M."""
        model_trace, guide_trace = next(self._get_traces(model, guide, args, kwargs))
        log_w, scale = 0.0, None
        for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
            for name, site in trace.nodes.items():
                if site["type"] != "sample":
                    continue
                frames = {f.name: f for f in site["cond_indep_stack"] if f.vectorized}
                if self.data_plate not in frames:
                    raise ValueError(f"IWAE: site {shown(name)} is outside the plate {shown(self.data_plate)}; "
                                     "the bound is per datapoint, so every site must be local")
                if sign < 0 and not site["fn"].has_rsample:
                    raise ValueError(f"IWAE: guide site {shown(name)} is not reparameterizable")
                frame = frames[self.data_plate]
                site_scale = (frame.full_size or frame.size) / frame.size
                if scale is not None and site_scale != scale:
                    raise ValueError(f"IWAE: sites of plate {shown(self.data_plate)} have different subsample scales")
                scale = site_scale
                # Bring the log-density to (particles, ..., datapoints) and sum the plates in between.
                lp = site["unscaled_log_prob"]  # "log_prob" already carries the N/M scale
                lp = lp.reshape((1,) * (max(-f.dim for f in frames.values()) - lp.dim()) + lp.shape)
                particles = frames.get(_PARTICLE_PLATE)
                if particles is None:
                    lp = lp.movedim(frame.dim, -1).unsqueeze(0)
                else:
                    lp = lp.movedim((particles.dim, frame.dim), (0, -1))
                inner = tuple(range(1, lp.dim() - 1))
                log_w = log_w + sign * (lp.sum(inner) if inner else lp)  # sum(()) would sum everything
        return log_w, scale

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """-(N/M) sum_i IWAE_k(x_i), differentiable in the parameters of model and guide."""
        log_w, scale = self.log_weights(model, guide, *args, **kwargs)
        bound = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
        loss = -scale * bound.sum()
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()
