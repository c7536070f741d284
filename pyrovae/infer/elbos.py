"""Pyro ELBOs for pyrovae's estimators, and the per-datapoint numbers as one-line fronts over Terms.

- :func:`make_elbo`: an estimator name -> the Pyro ELBO that computes the same on a model's
  ``model`` and ``guide`` (``analytic``: ``TraceMeanField_ELBO``, ``mc``: ``Trace_ELBO``, or
  ``TraceEnum_ELBO`` where the model has sites marked for enumeration, ``iwae``: :class:`IWAE`
  below), with L = ``num_particles`` vectorized particles;
- :func:`objective_per_datapoint`, :func:`elbo_terms`, :func:`elbo_per_datapoint`: the same
  numbers per datapoint, read off the model's :class:`~pyrovae.models.terms.Terms` (see
  :mod:`pyrovae.infer.estimators`);
- :class:`LatentScale`: the KL weight beta for Pyro's ELBOs, as a handler (not model state).
"""


from typing import Optional

import pyro.infer
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyrovae.errors import ConfigError, shown
from pyrovae.infer.estimators import ESTIMATORS, TermsELBO, estimate, resolve_estimator
from pyrovae.models.terms import log_mean_exp


def make_elbo(estimator: str, model, num_particles: int = 1, batch=None) -> pyro.infer.ELBO:
    """The Pyro ELBO for an estimator name (``auto`` resolved on ``batch`` first, see
    :func:`~pyrovae.infer.estimators.resolve_estimator`), chosen from the traces of ``batch``: one
    batch, or a list of the kinds of batch it will train on (a family that takes labels per
    minibatch: a labelled and an unlabelled one), ``TraceEnum_ELBO`` if any marks a site for
    enumeration, vectorized particles if all can take them."""
    if num_particles < 1:
        raise ConfigError(f"train.num_particles = {num_particles}: must be >= 1")
    if estimator == "auto" or batch is not None:
        estimator = resolve_estimator(estimator, model, batch)
    # The VAE has exactly one plate, so the particle plate goes at dim -2 without a guessing trace.
    nesting = getattr(model, "plate_nesting", None) or float("inf")
    # L > 1 particles in one pass where the family can take a particle plate (Model.vectorized_for),
    # else one after another, as Pyro's vectorize_particles=False does
    batches = [] if batch is None else list(batch) if isinstance(batch, (list, tuple)) else [batch]
    shown_on_batch = batches and hasattr(model, "vectorized_for")
    vectorize = num_particles > 1 and (all(model.vectorized_for(b) for b in batches) if shown_on_batch
                                       else getattr(model, "particles_vectorized", True) is not False)
    if estimator == "iwae":
        if num_particles > 1 and not vectorize:
            raise ConfigError(f"train.estimator = 'iwae' with train.engine = 'pyro' draws its "
                              f"{num_particles} particles in one pass, which {type(model).__name__} cannot take "
                              f"({model.particles_note}); use train.engine = 'torch'")
        return IWAE(num_particles=num_particles, max_plate_nesting=nesting)
    enumerated = model.enumerated_sites(batches) if batches and hasattr(model, "enumerated_sites") else []
    if estimator == "analytic" and enumerated:
        raise ConfigError(f"train.estimator = 'analytic': Pyro's TraceMeanField_ELBO cannot sum out the "
                          f"enumerated sites {', '.join(map(repr, enumerated))}; use 'mc' (TraceEnum_ELBO) or 'auto'")
    if estimator == "mc" and enumerated:
        return pyro.infer.TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=vectorize,
                                         max_plate_nesting=max(model.max_plate_nesting(b) for b in batches))
    cls = ESTIMATORS.get(estimator).pyro_elbo
    if cls is None:
        raise ConfigError(f"train.estimator = {shown(estimator)} has no Pyro ELBO: use train.engine = 'torch'")
    return cls(num_particles=num_particles, vectorize_particles=vectorize, max_plate_nesting=nesting)


class LatentScale(Messenger):
    """Multiply the log-density of every latent (unobserved) site by ``beta``, in model and guide
    alike: log p(z) - log q(z|x), the KL term, gets the weight beta and the reconstruction term
    none (beta-VAE, Higgins et al. 2017; KL annealing). ``beta = 0`` masks the sites (Pyro's
    scales must be positive)."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = float(beta)

    def _process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
            return
        if self.beta == 0:
            msg["mask"] = False if msg["mask"] is None else msg["mask"] & False
        else:
            msg["scale"] = self.beta * msg["scale"]


def objective_per_datapoint(model, x, estimator: str = "analytic", num_particles: int = 1, beta: float = 1.0,
                            noise: Optional[torch.Tensor] = None, num_data: Optional[int] = None):
    """``(objective, elbo)``, each ``(M,)``: what an estimator maximises for each datapoint of x
    (a tensor or a :class:`~pyrovae.Batch`) at KL weight ``beta``, and the ELBO from the same
    samples; ``noise``: what the family's :meth:`~pyrovae.Model.noise_shape` asks for (the loop
    draws it); ``num_data``: the N a global latent is shared by (default: x's size). Pyro's
    ``TraceMeanField_ELBO``, ``Trace_ELBO`` and :class:`IWAE` compute (N/M) times the minibatch's
    sum (``tests/test_objectives.py``)."""
    return estimate(model, x, estimator, num_particles, beta, noise, num_data)


def elbo_terms(model, x, num_particles: int = 1, analytic_kl: Optional[bool] = None, num_data: Optional[int] = None):
    """``(reconstruction, kl)`` for each datapoint of x (each ``(M,)``, nats): the two terms of
    the ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)) (Kingma & Welling 2014, eq. 3), the KL in
    closed form where the model has one (``analytic_kl=None``), at the particles
    (``False``: estimator A), or closed form required (``True``)."""
    terms = model.terms(x, num_particles, num_data, kl=analytic_kl is not False)
    if analytic_kl and not terms.kl_exact:
        raise ConfigError("analytic_kl=True: the model's KL has no closed form for every latent site")
    kl = terms.kl if analytic_kl is not False and terms.kl_exact else terms.sampled_kl
    return terms.reconstruction.mean(0), kl.mean(0)


def elbo_per_datapoint(model, x, num_particles: int = 1, analytic_kl: Optional[bool] = None,
                       num_data: Optional[int] = None) -> torch.Tensor:
    """The ELBO of each datapoint of x (``(M,)``, nats): :func:`elbo_terms`' difference."""
    reconstruction, kl = elbo_terms(model, x, num_particles, analytic_kl, num_data)
    return reconstruction - kl


class IWAE(TermsELBO):
    """The importance-weighted bound (Burda et al. 2015) as a Pyro ELBO that stays correct
    under minibatches.

    For each datapoint x_i of the plate ``data_plate``, with z_{i,j} ~ q(z | x_i), j = 1..k:

        IWAE_k(x_i) = log (1/k) sum_j p(x_i, z_{i,j}) / q(z_{i,j} | x_i),

    and the loss of a minibatch of M points out of N is ``-(N/M) sum_i IWAE_k(x_i)``. Pyro's
    ``RenyiELBO(alpha=0)`` applies the N/M scale to the log-weights before the log-sum-exp,
    computing sum_i log (1/k) sum_j w_ij^(N/M), which is wrong under plate subsampling
    (``tests/test_evaluate.py`` shows both); here the log-sum-exp runs over each datapoint's
    own k unscaled weights and the scale is applied after it. k = 1 is estimator A.

    Every latent site must be reparameterized (or marked for enumeration: it is summed out inside
    each weight). A global latent (outside the data plate) counts 1/N of its log-density in each
    datapoint's weights, as ``Model.terms`` has it (the torch engine's ``iwae`` is the same number).

    :param int num_particles: k, drawn in one vectorized pass.
    :param str data_plate: the name of the plate whose entries are datapoints.
    :param int max_plate_nesting: as in Pyro's ELBOs (guessed by a trace when not given).

    [1] "Importance Weighted Autoencoders", Yuri Burda, Roger Grosse, Ruslan Salakhutdinov (2015)
    """

    #: always from traces of the programs, as Pyro's RenyiELBO draws them (tests compare the two)
    model_terms = False

    def __init__(self, num_particles: int = 10, data_plate: str = "data", max_plate_nesting: float = float("inf")):
        super().__init__(num_particles, data_plate, max_plate_nesting, vectorize_particles=True)

    def log_weights(self, model, guide, *args, **kwargs):
        """``(log_w, scale)``: the log-weights of shape ``(k, M)`` (the :class:`~pyrovae.models.terms.Terms`
        of the traces, built by the same function as ``Model.terms``) and N/M."""
        terms, scale = self.terms(model, guide, *args, **kwargs)
        return terms.log_weights, scale

    def objective(self, terms):
        """IWAE_k per datapoint, ``(M,)``."""
        return log_mean_exp(terms.log_weights, 0)
