"""Estimators by name: how a model's per-datapoint :class:`~pyrovae.models.Terms` become the
objective that training maximises, and the ELBO that is reported.

For one datapoint, the evidence lower bound (Kingma & Welling 2014, eq. 3) is

    L(theta, phi; x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))  <=  log p(x).

With L particles z_l ~ q(z | x) and the KL weight beta (1 is the ELBO; beta-VAE, KL warm-up):

- ``analytic`` (estimator B, eq. 7): (1/L) sum_l log p(x|z_l) - beta KL(q || p), the KL in
  closed form (Pyro's ``TraceMeanField_ELBO``);
- ``mc`` (estimator A, eq. 6): (1/L) sum_l [log p(x|z_l) + beta (log p(z_l) - log q(z_l|x))]
  (Pyro's ``Trace_ELBO``);
- ``iwae``: log (1/L) sum_l p(x, z_l) / q(z_l | x), the importance-weighted bound (Burda et
  al. 2015; :class:`pyrovae.IWAE`), a tighter bound: ELBO <= IWAE_L <= log p(x); beta must be 1.

``auto`` (not an estimator, a choice) is ``analytic`` when the model's KL has a closed form for
every latent site, else ``mc``. An estimator registered with ``@ESTIMATORS.register(name)``
(e.g. in a plugin) is an :class:`Estimator` subclass with ``needs_kl`` and ``__call__(terms,
beta) -> (objective, elbo)``, each of shape ``(M,)``.

Every estimator is also a ``pyro.infer.ELBO``: ``SVI(vae.model, vae.guide, optim,
pyrovae.ESTIMATORS.build("mc"))`` trains in plain Pyro, with ``svi.step(batch, num_data)`` as the
model takes them. Its loss is -(N/M) times the minibatch's sum of the objective (what Pyro's
ELBOs compute under a subsampled plate), from the family's :meth:`~pyrovae.Model.terms` (its
closed forms) when model and guide are a pyrovae model's, else from traces of any Pyro model and
guide (:func:`pyrovae.models.terms.trace_terms`, the one place traces become numbers).
"""

import contextlib
import math
from typing import Optional, Sequence, Tuple

import pyro.infer
import torch
from pyro.infer.enum import get_importance_trace
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.util import warn_if_nan

from pyrovae.data.batch import as_batch
from pyrovae.errors import ConfigError, shown
from pyrovae.models.terms import PARTICLE_PLATE, Terms, log_mean_exp, sample_sites, trace_terms
from pyrovae.parts.posteriors import has_closed_form_kl
from pyrovae.registry import Registry

ESTIMATORS = Registry("estimator")
"""ELBO estimators by name (``train.estimator``): ``analytic`` (estimator B), ``mc`` (estimator A)
and ``iwae``, each an :class:`Estimator` over a model's terms.
"""


class TermsELBO(pyro.infer.ELBO):
    """A Pyro ELBO that reads :class:`~pyrovae.models.terms.Terms`: the base of the estimators and
    of :class:`~pyrovae.IWAE`. :meth:`terms` gives the minibatch's terms and N/M, from a pyrovae
    model's :meth:`~pyrovae.Model.terms` (its closed forms) or from traces of any model and guide;
    calling it on them gives what is maximised and the ELBO, per datapoint, from the same draws
    (so the reported ELBO costs no second pass).

    :param int num_particles: L, drawn in one vectorized pass (a particle plate) where L > 1.
    :param str data_plate: the plate whose entries are the datapoints.
    :param max_plate_nesting: as in Pyro's ELBOs (guessed by a trace when not given).
    :param vectorize_particles: as in Pyro's ELBOs (default: where L > 1).
    :param bool from_traces: read the traces of the model and guide even where they are a pyrovae
        model's (``train.engine = "pyro"``); else its :meth:`~pyrovae.Model.terms`.
    """

    #: whether it reads ``terms.kl`` (else ``terms.log_prior`` and ``terms.log_q``)
    needs_kl = False

    def __init__(self, num_particles: int = 1, data_plate: str = "data", max_plate_nesting: float = float("inf"),
                 vectorize_particles: Optional[bool] = None, from_traces: bool = False):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=num_particles > 1 if vectorize_particles is None else vectorize_particles)
        self.data_plate, self.from_traces = data_plate, bool(from_traces)

    def _get_trace(self, model, guide, args, kwargs):
        # discrete sites marked for enumeration: the guide's left of the plates, the model's further left
        guide = EnumMessenger(first_available_dim=-1 - self.max_plate_nesting)(guide)
        return get_importance_trace("flat", self.max_plate_nesting, EnumMessenger()(model), guide, args, kwargs)

    def reads_model_terms(self, model, guide) -> bool:
        """Whether ``model`` and ``guide`` are one pyrovae model's, whose own terms are read."""
        owner = getattr(model, "__self__", None)
        return (not self.from_traces and owner is not None and getattr(guide, "__self__", None) is owner
                and hasattr(owner, "terms"))

    @staticmethod
    def _as_in_pyro(model):
        """The context a pyrovae model's methods run in under Pyro (its parameters reach the param store
        that ``SVI``'s optimizer reads, as in ``model()``); the trainer's torch optimizer needs none."""
        return getattr(getattr(model, "__self__", None), "_pyro_context", None) or contextlib.nullcontext()

    def terms(self, model, guide, *args, noise: Optional[torch.Tensor] = None, **kwargs) -> Tuple[Terms, float]:
        """``(terms, N/M)`` of the minibatch that ``args`` give the model (``(batch, num_data)``);
        ``noise``: the standard normal draw a pyrovae model's terms take (its ``noise_shape``)."""
        if self.reads_model_terms(model, guide) and args:
            owner = model.__self__
            batch = as_batch(args[0])
            num_data = args[1] if len(args) > 1 else kwargs.get("num_data")
            terms = owner.terms(batch, self.num_particles, num_data, kl=self.needs_kl, noise=noise)
            return terms, (num_data or len(batch)) / len(batch)
        if self.vectorize_particles and self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        particles = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            frames = [f for trace in (model_trace, guide_trace) for _, site in sample_sites(trace)
                      for f in site["cond_indep_stack"] if f.name == self.data_plate]
            if not frames:
                raise ValueError(f"{type(self).__name__}: no site is inside the plate {shown(self.data_plate)}; the "
                                 "estimate is per datapoint")
            if len({(f.size, f.full_size) for f in frames}) > 1:
                raise ValueError(f"{type(self).__name__}: sites of plate {shown(self.data_plate)} have different "
                                 "subsample scales")
            m, n = frames[0].size, frames[0].full_size or frames[0].size
            vectorized = any(f.name == PARTICLE_PLATE for _, site in sample_sites(model_trace)
                             for f in site["cond_indep_stack"])
            nesting = None if self.max_plate_nesting == float("inf") else int(self.max_plate_nesting)
            particles.append(trace_terms(model_trace, guide_trace, self.num_particles if vectorized else 1, m, n,
                                         kl=self.needs_kl, plate=self.data_plate, nesting=nesting))
        return (particles[0] if len(particles) == 1 else Terms.stack(particles)), n / m

    def __call__(self, terms: Terms, beta: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(objective, elbo)`` per datapoint, ``(M,)`` each: what is maximised (at KL weight
        ``beta``) and the ELBO, from the same terms."""
        raise NotImplementedError

    def per_datapoint(self, model, guide, args: tuple = (), kwargs: Optional[dict] = None, beta: float = 1.0,
                      noise: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, float]:
        """``(objective, elbo, N/M)``: ``self(terms, beta)`` of the minibatch that ``args`` and
        ``kwargs`` give the programs, at KL weight ``beta`` (the trainer's one call per step)."""
        terms, scale = self.terms(model, guide, *args, noise=noise, **(kwargs or {}))
        objective, elbo = self(terms, beta)
        return objective, elbo, scale

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """-(N/M) sum_i objective_i over the minibatch, differentiable in the parameters."""
        with self._as_in_pyro(model):
            objective, _, scale = self.per_datapoint(model, guide, args, kwargs, getattr(self, "beta", 1.0))
        loss = -scale * objective.sum()
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


class Estimator(TermsELBO):
    """Reduces terms ``(L, M)`` to ``(objective, elbo)`` per datapoint, ``(M,)`` each. A family's
    ``terms.auxiliary`` (M2's classifier term) is added to the objective, never to the ELBO. As a
    Pyro ELBO (:class:`TermsELBO`) it maximises the objective at KL weight ``beta``.

    :meth:`pyro_elbo` is what ``train.engine = "pyro"`` builds for it: Pyro's own class where one
    computes the same, else the estimator itself over the programs' traces.
    """

    def __init__(self, num_particles: int = 1, beta: float = 1.0, data_plate: str = "data",
                 max_plate_nesting: float = float("inf"), vectorize_particles: Optional[bool] = None,
                 from_traces: bool = False):
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta}")
        super().__init__(num_particles, data_plate, max_plate_nesting, vectorize_particles, from_traces)
        self.beta = float(beta)

    @classmethod
    def pyro_elbo(cls, num_particles: int, vectorize: bool, max_plate_nesting: float,
                  enumerated: Sequence[str] = (), enum_nesting: Optional[int] = None) -> pyro.infer.ELBO:
        """The ELBO on a model's ``model`` and ``guide`` (``train.engine = "pyro"``), L = ``num_particles``
        in one pass where ``vectorize``; ``enumerated``: the sites marked for enumeration (their plate
        nesting ``enum_nesting``). Here: the estimator over the traces (enumerated sites summed out
        in the terms)."""
        return cls(num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=vectorize,
                   from_traces=True)


@ESTIMATORS.register("analytic")
class Analytic(Estimator):
    """Estimator B: (1/L) sum_l log p(x|z_l) - beta KL(q || p), the KL in closed form; under the
    Pyro engine, Pyro's ``TraceMeanField_ELBO``."""

    needs_kl = True

    def __call__(self, terms, beta=1.0):
        return reconstruction_minus_kl(terms.reconstruction.mean(0), terms.kl.mean(0), beta, terms)

    @classmethod
    def pyro_elbo(cls, num_particles, vectorize, max_plate_nesting, enumerated=(), enum_nesting=None):
        if enumerated:
            raise ConfigError(f"train.estimator = 'analytic': Pyro's TraceMeanField_ELBO cannot sum out the "
                              f"enumerated sites {', '.join(map(repr, enumerated))}; use 'mc' (TraceEnum_ELBO) "
                              "or 'auto'")
        return pyro.infer.TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=vectorize,
                                              max_plate_nesting=max_plate_nesting)


@ESTIMATORS.register("mc")
class MonteCarlo(Estimator):
    """Estimator A: (1/L) sum_l [log p(x|z_l) - beta (log q(z_l|x) - log p(z_l))]; under the Pyro
    engine, Pyro's ``Trace_ELBO`` (``TraceEnum_ELBO`` where sites are marked for enumeration)."""

    def __call__(self, terms, beta=1.0):
        return reconstruction_minus_kl(terms.reconstruction.mean(0), terms.sampled_kl.mean(0), beta, terms)

    @classmethod
    def pyro_elbo(cls, num_particles, vectorize, max_plate_nesting, enumerated=(), enum_nesting=None):
        if enumerated:
            return pyro.infer.TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=vectorize,
                                             max_plate_nesting=enum_nesting)
        return pyro.infer.Trace_ELBO(num_particles=num_particles, vectorize_particles=vectorize,
                                     max_plate_nesting=max_plate_nesting)


@ESTIMATORS.register("iwae")
class ImportanceWeighted(Estimator):
    """IWAE_L: log (1/L) sum_l p(x, z_l) / q(z_l | x) (Burda et al. 2015); the ELBO from the same
    samples. Under the Pyro engine, :class:`~pyrovae.IWAE` over the traces."""

    def __call__(self, terms, beta=1.0):
        return with_auxiliary(log_mean_exp(terms.log_weights, 0), terms), terms.elbo.mean(0)

    @classmethod
    def pyro_elbo(cls, num_particles, vectorize, max_plate_nesting, enumerated=(), enum_nesting=None):
        return IWAE(num_particles, max_plate_nesting=max_plate_nesting, vectorize_particles=vectorize)


class IWAE(ImportanceWeighted):
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
    It always reads the traces of the programs, as Pyro's RenyiELBO draws them (tests compare the two).

    :param int num_particles: k, drawn in one vectorized pass (``vectorize_particles=False``: one
        after another, for a program that cannot take a particle plate).
    :param str data_plate: the name of the plate whose entries are datapoints.
    :param int max_plate_nesting: as in Pyro's ELBOs (guessed by a trace when not given).

    [1] "Importance Weighted Autoencoders", Yuri Burda, Roger Grosse, Ruslan Salakhutdinov (2015)
    """

    def __init__(self, num_particles: int = 10, data_plate: str = "data", max_plate_nesting: float = float("inf"),
                 vectorize_particles: bool = True):
        super().__init__(num_particles, 1.0, data_plate, max_plate_nesting, vectorize_particles, from_traces=True)

    def log_weights(self, model, guide, *args, **kwargs):
        """``(log_w, scale)``: the log-weights of shape ``(k, M)`` (the :class:`~pyrovae.models.terms.Terms`
        of the traces, built by the same function as ``Model.terms``) and N/M."""
        terms, scale = self.terms(model, guide, *args, **kwargs)
        return terms.log_weights, scale


def reconstruction_minus_kl(reconstruction, kl, beta: float, terms) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(objective, elbo)`` from a reconstruction term and a KL term per datapoint: the ELBO is
    reconstruction - KL; the objective weighs the KL by beta and adds the family's auxiliary term."""
    elbo = reconstruction - kl
    return with_auxiliary(elbo if beta == 1.0 else reconstruction - beta * kl, terms), elbo


def with_auxiliary(objective: torch.Tensor, terms) -> torch.Tensor:
    """The objective plus the family's auxiliary term, if it has one."""
    return objective if terms.auxiliary is None else objective + terms.auxiliary


def estimator_names() -> Tuple[str, ...]:
    """What ``train.estimator`` takes: ``auto`` and every registered estimator."""
    return ("auto", *ESTIMATORS.names())


def get_estimator(name: str) -> Estimator:
    return ESTIMATORS.build(name, "train.estimator")


def resolve_estimator(estimator: str, model, batch=None, engine: str = "torch") -> str:
    """``auto`` -> ``analytic`` or ``mc`` for this model; checks that ``analytic`` applies
    (``batch``: a sample batch, or a list of them, for families whose answer needs a trace: analytic
    where every one has a closed-form KL; under ``engine = "pyro"``, mc where a site is enumerated)."""
    if estimator not in estimator_names():
        raise ConfigError(f"train.estimator: unknown estimator {shown(estimator)}; "
                          f"valid: {', '.join(estimator_names())}")
    if estimator not in ("auto", "analytic"):
        return estimator
    batches = batch if isinstance(batch, (list, tuple)) else [batch]
    if estimator == "auto" and engine == "pyro" and batch is not None and hasattr(model, "enumerated_sites") \
            and model.enumerated_sites(batches):
        return "mc"  # Pyro sums enumerated sites out in TraceEnum_ELBO, which samples the KL (no closed form)
    analytic_ok = all(model.has_closed_form_kl(b) for b in batches)
    if estimator == "auto":
        return "analytic" if analytic_ok else "mc"
    if not analytic_ok:
        posterior = getattr(model, "posterior_module", None)
        if posterior is not None and not has_closed_form_kl(posterior):
            what = f"the posterior ({type(posterior).__name__})"
        elif hasattr(model, "prior") and not has_closed_form_kl(model.prior):
            what = f"the {type(model.prior).__name__}"
        else:
            what = ("a latent site of the model (its KL has no closed form, or its prior depends on a latent the "
                    "guide samples after it, as z1's on z2 in hvae, where the closed form would be biased)")
        raise ConfigError(f"train.estimator = 'analytic': {what} gives no closed-form KL(q || p); "
                          "use 'mc' or 'iwae' (or 'auto')")
    return estimator


def estimate(model, batch, estimator: str, num_particles: int = 1, beta: float = 1.0,
             noise: Optional[torch.Tensor] = None, num_data: Optional[int] = None):
    """``(objective, elbo)`` per datapoint: the estimator over the model's terms."""
    reduce = get_estimator(estimator)
    terms = model.terms(batch, num_particles, num_data, kl=reduce.needs_kl, noise=noise)
    return reduce(terms, beta)
