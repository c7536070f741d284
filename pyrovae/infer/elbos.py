"""The ELBO a run trains on, as a Pyro ELBO object, and the step's sums from it.

- :func:`make_elbo`: an estimator name -> the ELBO on a model's ``model`` and ``guide``: under
  ``engine = "torch"`` the estimator itself, reading the family's :meth:`~pyrovae.Model.terms`
  (its closed forms); under ``engine = "pyro"`` what the estimator's
  :meth:`~pyrovae.Estimator.pyro_elbo` names (``analytic``: ``TraceMeanField_ELBO``, ``mc``:
  ``Trace_ELBO``, or ``TraceEnum_ELBO`` where the model has sites marked for enumeration,
  ``iwae``: :class:`~pyrovae.IWAE`, a user's estimator: itself over the traces), with L =
  ``num_particles`` particles;
- :func:`minibatch_sums`: the one way the trainer reads any ``pyro.infer.ELBO``, pyrovae's or
  Pyro's: a minibatch's sum of what is maximised at KL weight beta and its sum of ELBOs, from
  one forward pass;
- :func:`objective_per_datapoint`, :func:`elbo_terms`, :func:`elbo_per_datapoint`: the numbers
  per datapoint, read off the model's :class:`~pyrovae.models.terms.Terms` (see
  :mod:`pyrovae.infer.estimators`);
- :class:`LatentScale`: the KL weight beta for Pyro's ELBOs, as a handler (not model state).
"""


import contextlib
from typing import Optional, Tuple

import pyro.infer
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyrovae.errors import ConfigError
from pyrovae.infer.estimators import ESTIMATORS, TermsELBO, estimate, resolve_estimator

ENGINES = ("torch", "pyro")
"""What ``train.engine`` takes: which ELBO object :func:`make_elbo` builds."""


def make_elbo(estimator: str, model, num_particles: int = 1, batch=None, engine: str = "pyro") -> pyro.infer.ELBO:
    """The ELBO for an estimator name (``auto`` resolved on ``batch`` first, see
    :func:`~pyrovae.infer.estimators.resolve_estimator`) on ``model.model`` and ``model.guide``.
    ``engine = "torch"``: the registered estimator, over the family's own terms. ``engine =
    "pyro"``: its :meth:`~pyrovae.Estimator.pyro_elbo`, chosen from the traces of ``batch`` (one
    batch, or a list of the kinds of batch it will train on: a family that takes labels per
    minibatch has a labelled and an unlabelled one): ``TraceEnum_ELBO`` if any marks a site for
    enumeration, vectorized particles if all can take them."""
    if num_particles < 1:
        raise ConfigError(f"train.num_particles = {num_particles}: must be >= 1")
    if estimator == "auto" or batch is not None:
        estimator = resolve_estimator(estimator, model, batch, engine)
    if engine == "torch":
        return ESTIMATORS.build(estimator, "train.estimator", num_particles=num_particles)
    # The VAE has exactly one plate, so the particle plate goes at dim -2 without a guessing trace.
    nesting = getattr(model, "plate_nesting", None) or float("inf")
    # L > 1 particles in one pass where the family can take a particle plate (Model.vectorized_for),
    # else one after another, as Pyro's vectorize_particles=False does
    batches = [] if batch is None else list(batch) if isinstance(batch, (list, tuple)) else [batch]
    shown_on_batch = batches and hasattr(model, "vectorized_for")
    vectorize = num_particles > 1 and (all(model.vectorized_for(b) for b in batches) if shown_on_batch
                                       else getattr(model, "particles_vectorized", True) is not False)
    enumerated = model.enumerated_sites(batches) if batches and hasattr(model, "enumerated_sites") else []
    enum_nesting = max(model.max_plate_nesting(b) for b in batches) if enumerated else None
    return ESTIMATORS.get(estimator).pyro_elbo(num_particles, vectorize, nesting, enumerated, enum_nesting)


def minibatch_sums(elbo: pyro.infer.ELBO, model, batch, num_data: int, beta: float = 1.0,
                   noise: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(objective, elbo)``: the minibatch's sum of what ``elbo`` maximises at KL weight ``beta``
    (differentiable) and its sum of ELBOs (None: the same), each point weighed by ``batch.weight``
    where given, both from one pass.

    - A :class:`~pyrovae.infer.estimators.TermsELBO` (pyrovae's estimators) gives both per datapoint
      (:meth:`~pyrovae.infer.estimators.TermsELBO.per_datapoint`).
    - Any other Pyro ELBO gives its loss, -(N/M) sum_i f_i under the plate "data", with every latent
      site's log-density weighted by beta (:class:`LatentScale`). That loss is linear in beta,
      f(beta) = a + beta b, so the ELBO f(1) = f(beta) + (1 - beta) df/dbeta comes from the same
      pass: beta is a leaf tensor and df/dbeta one backward step through the scales alone
      (``tests/test_estimators_as_elbos.py`` ties it to a pass at beta = 1).
    """
    weight = batch.weight
    if isinstance(elbo, TermsELBO):
        objective, elbo_value, _ = elbo.per_datapoint(model.model, model.guide, (batch, num_data), beta=beta,
                                                      noise=noise)
        same = elbo_value is objective
        if weight is not None:  # a stratified minibatch (train.labeled_per_batch): data.sampling.epoch_plan
            objective = objective * weight
            elbo_value = objective if same else elbo_value * weight
        return objective.sum(), (None if same else elbo_value.sum())
    if weight is not None and bool((weight != weight[0]).any()):
        raise ValueError(f"{type(elbo).__name__} weighs a minibatch as a whole: its points' weights must be equal")
    if beta == 1.0:
        scaled, beta_leaf = contextlib.nullcontext(), None
    else:
        beta_leaf = torch.tensor(float(beta), requires_grad=True)
        scaled = LatentScale(beta_leaf)
    with scaled, torch.enable_grad() if beta_leaf is not None else contextlib.nullcontext():
        loss = elbo.differentiable_loss(model.model, model.guide, batch, num_data)
        objective = loss * (-len(batch) / num_data)  # the plate's N/M undone: the sum of f_i
    elbo_value = None
    if beta_leaf is not None:
        slope, = torch.autograd.grad(objective, beta_leaf, retain_graph=True)
        elbo_value = objective.detach() + (1.0 - beta) * slope
    if weight is not None:  # a minibatch of one kind weighs its points alike (data.sampling.split_plan)
        objective, elbo_value = objective * weight[0], (None if elbo_value is None else elbo_value * weight[0])
    return objective, elbo_value


class LatentScale(Messenger):
    """Multiply the log-density of every latent (unobserved) site by ``beta``, in model and guide
    alike: log p(z) - log q(z|x), the KL term, gets the weight beta and the reconstruction term
    none (beta-VAE, Higgins et al. 2017; KL annealing). A number ``beta = 0`` masks the sites
    (Pyro's scales must be positive); a tensor ``beta`` (:func:`minibatch_sums`' leaf) always scales."""

    def __init__(self, beta):
        super().__init__()
        self.beta = beta if isinstance(beta, torch.Tensor) else float(beta)

    def _process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
            return
        if not isinstance(self.beta, torch.Tensor) and self.beta == 0:
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
