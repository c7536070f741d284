"""Pyro ELBOs for pyrovae's estimators, and the per-datapoint ELBO with plain tensors.

- :func:`make_elbo`: an estimator name -> the Pyro ELBO that computes the same on a model's
  ``model`` and ``guide`` (``analytic``: ``TraceMeanField_ELBO``, ``mc``: ``Trace_ELBO``,
  ``iwae``: :class:`IWAE` below), with L = ``num_particles`` vectorized particles;
- :func:`objective_per_datapoint`, :func:`elbo_terms`, :func:`elbo_per_datapoint`: the same
  numbers per datapoint from the model's :meth:`~pyrovae.Model.terms` (see
  :mod:`pyrovae.estimators`);
- :class:`LatentScale`: the KL weight beta for Pyro's ELBOs, as a handler (not model state).
"""


from typing import Optional

import pyro.infer
import torch
from pyro.infer.enum import get_importance_trace
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from pyro.util import warn_if_nan

from .errors import ConfigError, shown
from .estimators import ESTIMATORS, estimate, resolve_estimator
from .models.base import log_mean_exp, per_datapoint


def make_elbo(estimator: str, model, num_particles: int = 1) -> pyro.infer.ELBO:
    """The Pyro ELBO for an estimator name (after :func:`~pyrovae.estimators.resolve_estimator`)."""
    if num_particles < 1:
        raise ConfigError(f"train.num_particles = {num_particles}: must be >= 1")
    estimator = resolve_estimator(estimator, model)
    # The VAE has exactly one plate, so the particle plate goes at dim -2 without a guessing trace.
    nesting = getattr(model, "plate_nesting", None) or float("inf")
    if estimator == "iwae":
        return IWAE(num_particles=num_particles, max_plate_nesting=nesting)
    cls = ESTIMATORS.get(estimator).pyro_elbo
    if cls is None:
        raise ConfigError(f"train.estimator = {shown(estimator)} has no Pyro ELBO: use train.engine = 'torch'")
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=nesting)


class LatentScale(Messenger):
    """Multiply the log-density of every latent (unobserved) site by ``beta``, in model and guide
    alike: log p(z) - log q(z|x), the KL term, gets the weight beta and the reconstruction term
    none (beta-VAE, Higgins et al. 2017; KL annealing). ``beta = 0`` masks the sites (Pyro's
    scales must be positive)."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = float(beta)

    def _process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or isinstance(msg["fn"], _Subsample):
            return
        if self.beta == 0:
            msg["mask"] = False if msg["mask"] is None else msg["mask"] & False
        else:
            msg["scale"] = self.beta * msg["scale"]


def objective_per_datapoint(model, x, estimator: str = "analytic", num_particles: int = 1,
                            kl_weight: float = 1.0, eps: torch.Tensor = None):
    """``(objective, elbo)``, each of shape ``(M,)``: what an estimator maximises for each
    datapoint of x (a tensor or a :class:`~pyrovae.Batch`), and the ELBO estimate from the same
    samples, with beta = ``kl_weight`` (see :mod:`pyrovae.estimators`).

    These are the quantities whose minibatch sums, scaled by N/M, Pyro's
    ``TraceMeanField_ELBO``, ``Trace_ELBO`` and :class:`IWAE` compute on ``model.model`` and
    ``model.guide``; drawing the same noise, values and gradients agree
    (``tests/test_objectives.py``).

    ``eps``, if given, is the noise the family takes (:meth:`~pyrovae.Model.noise_shape`; the
    VAE's standard normal eps of shape ``(L, M, latent_dim)``): the training loop draws it for
    the whole global batch from its own generator, so that a run sharded over several processes
    sees the same noise as one process.
    """
    return estimate(model, x, estimator, num_particles, kl_weight, eps)


def elbo_terms(model, x, num_particles: int = 1, analytic_kl: bool = None, num_data: Optional[int] = None):
    """``(reconstruction, kl)`` for each datapoint of x (each of shape ``(M,)``, nats): the two
    terms of the ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) (Kingma & Welling 2014, eq. 3).

    The reconstruction term is (1/L) sum_l log p(x|z_l); the KL is the closed form where the
    model has one (``analytic_kl=None``), else (1/L) sum_l [log q(z_l|x) - log p(z_l)];
    ``analytic_kl=False`` always takes the latter (estimator A), ``True`` requires the former.
    ``num_data``: the N that a global latent's log-densities are shared by (default: x's size).
    """
    terms = model.terms(x, num_particles, num_data, kl=analytic_kl is not False)
    if analytic_kl is False:
        return terms.reconstruction.mean(0), (terms.log_q - terms.log_prior).mean(0)
    if analytic_kl and not terms.kl_exact:
        raise ConfigError("analytic_kl=True: the model's KL has no closed form for every latent site")
    return terms.reconstruction.mean(0), terms.kl.mean(0)


def elbo_per_datapoint(model, x, num_particles: int = 1, analytic_kl: bool = None) -> torch.Tensor:
    """The ELBO of each datapoint of x (shape ``(M,)``, nats), computed with plain tensors.

    The same quantity as the Pyro ELBOs above, without the N/M scale (see :func:`elbo_terms`).
    """
    reconstruction, kl = elbo_terms(model, x, num_particles, analytic_kl)
    return reconstruction - kl


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
                # "log_prob" already carries the N/M scale; the unscaled one goes to (particles, datapoints)
                lp = per_datapoint(site["unscaled_log_prob"], site, (self.num_particles, frame.size), frame.size,
                                   self.data_plate)
                log_w = log_w + sign * lp
        return log_w, scale

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """-(N/M) sum_i IWAE_k(x_i), differentiable in the parameters of model and guide."""
        log_w, scale = self.log_weights(model, guide, *args, **kwargs)
        bound = log_mean_exp(log_w, 0)
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
