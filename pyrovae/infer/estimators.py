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
(e.g. in a plugin) is a class with ``needs_kl`` and ``__call__(terms, beta) -> (objective,
elbo)``, each of shape ``(M,)``.
"""

from typing import Optional, Tuple

import pyro.infer
import torch

from pyrovae.errors import ConfigError, shown
from pyrovae.models.terms import log_mean_exp
from pyrovae.parts.posteriors import has_closed_form_kl
from pyrovae.registry import Registry

ESTIMATORS = Registry("estimator")
"""ELBO estimators by name (``train.estimator``): ``analytic`` (estimator B), ``mc`` (estimator A)
and ``iwae``, each an :class:`Estimator` over a model's terms.
"""


class Estimator:
    """Reduces terms ``(L, M)`` to ``(objective, elbo)`` per datapoint, ``(M,)`` each. A family's
    ``terms.auxiliary`` (M2's classifier term) is added to the objective, never to the ELBO."""

    #: whether it reads ``terms.kl`` (else ``terms.log_prior`` and ``terms.log_q``)
    needs_kl = False
    #: the Pyro ELBO class computing the same (train.engine = "pyro"), or None
    pyro_elbo = None

    def __call__(self, terms, beta: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@ESTIMATORS.register("analytic")
class Analytic(Estimator):
    """Estimator B: (1/L) sum_l log p(x|z_l) - beta KL(q || p), the KL in closed form."""

    needs_kl = True
    pyro_elbo = pyro.infer.TraceMeanField_ELBO

    def __call__(self, terms, beta=1.0):
        return reconstruction_minus_kl(terms.reconstruction.mean(0), terms.kl.mean(0), beta, terms)


@ESTIMATORS.register("mc")
class MonteCarlo(Estimator):
    """Estimator A: (1/L) sum_l [log p(x|z_l) - beta (log q(z_l|x) - log p(z_l))]."""

    pyro_elbo = pyro.infer.Trace_ELBO

    def __call__(self, terms, beta=1.0):
        return reconstruction_minus_kl(terms.reconstruction.mean(0), terms.sampled_kl.mean(0), beta, terms)


@ESTIMATORS.register("iwae")
class ImportanceWeighted(Estimator):
    """IWAE_L: log (1/L) sum_l p(x, z_l) / q(z_l | x) (Burda et al. 2015); the ELBO from the same samples."""

    def __call__(self, terms, beta=1.0):
        return with_auxiliary(log_mean_exp(terms.log_weights, 0), terms), terms.elbo.mean(0)


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
