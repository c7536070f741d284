"""What pyrovae reads off a model's traces: the ELBO's terms per particle and datapoint.

:func:`trace_terms` is the one place where traces become numbers. ``Model.terms`` (the general
path of every family) and the :class:`~pyrovae.IWAE` Pyro ELBO both call it, and every estimator,
the evaluation (ELBO, IWAE_k, test NLL) and the reported training ELBO read its :class:`Terms`.

For L particles and M datapoints, each unscaled (no N/M) and ``(L, M)``:

- ``reconstruction`` log p(x | z), ``log_prior`` log p(z), ``log_q`` log q(z | x);
- ``kl``: KL(q || p) site by site, in closed form where torch has one and the guide samples
  every latent the model samples before the site first, else log q - log p at the particle
  (Pyro's ``TraceMeanField_ELBO``); ``kl_exact`` says whether every site had a closed form;
- :attr:`Terms.elbo` log p(x, z_l) - log q(z_l | x), whose mean over particles is the ELBO
  (estimator A, Kingma & Welling 2014, eq. 6), and :attr:`Terms.log_weights`, each an unbiased
  estimate of log p(x) once exponentiated (Burda et al. 2015).

Discrete sites marked ``infer={"enumerate": "parallel"}`` are summed out of each datapoint's
terms, as Pyro's ``TraceEnum_ELBO`` does. With y_m the sites enumerated in the model only and
y_g those enumerated in the guide (one value per datapoint each: under the plate "data" and no
other), and z_{y_g} ~ q(z | x, y_g) drawn for every value of y_g in parallel:

    log p(x, z)  = log sum_{y_m} p(x, y_g, y_m, z),          log p(z) alike without x,
    ELBO_l       = sum_{y_g} q(y_g | x) [log p(x, z) - log q(z | x, y_g) - log q(y_g | x)],
    log w_l      = log sum_{y_g} p(x, z) / q(z | x, y_g),

so that ELBO <= log w averages <= log p(x). The reconstruction is log p(x, z) - log p(z) (y_m
summed out given z), and the KL is log q - log p at the particle (``kl_exact`` False).

A site outside the data plate (a global latent) is shared by all N datapoints: its log-density
counts 1/N for each, so that (N/M) times a minibatch's sum still estimates the full-data ELBO.
"""

import math
from dataclasses import dataclass
from typing import Dict, Iterable, Optional

import pyro
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from pyrovae.data.batch import Batch

DATA_PLATE = "data"
PARTICLE_PLATE = "num_particles_vectorized"  # the name Pyro's own ELBOs give the particle plate


def data_plate(x, num_data: Optional[int] = None, name: str = DATA_PLATE) -> pyro.plate:
    """The plate "data" of size ``num_data`` (or M) with the minibatch as its subsample.

    Every site sampled inside it is scaled by ``num_data / M``, so a Pyro ELBO of the
    minibatch is an unbiased estimate of the full-data ELBO (Kingma & Welling 2014, eq. 8).
    ``x`` is the minibatch (a tensor whose first dimension is M, or a :class:`~pyrovae.Batch`, which
    may be one without data: then its size).
    Passing the subsample indices rather than ``subsample_size`` avoids a ``randperm(N)`` per step.
    """
    if isinstance(x, Batch):
        size, device = len(x), x.device  # (a batch without data: its size)
    else:
        size, device = x.shape[0], x.device
    return pyro.plate(name, size=num_data or size, subsample=torch.arange(size, device=device))


@dataclass
class Terms:
    """The terms of the ELBO for each particle and datapoint, unscaled (no N/M), each ``(L, M)``
    (``kl`` may be ``(1, M)`` when it does not depend on the particle). ``log_prior`` and
    ``log_q`` are None when only the analytic estimator's terms were asked for.

    Two optional fields serve families with more than the ELBO: ``auxiliary`` ``(M,)`` is added
    to the training objective and left out of the ELBO (M2's alpha log q(y | x) on labelled
    points); ``importance_log_weights`` ``(L, M)`` replaces the default log-weights where a
    family sums a discrete latent out inside each weight (M2: log sum_y p(x, y, z_y) / q(z_y | x, y)).
    """

    reconstruction: torch.Tensor
    kl: Optional[torch.Tensor] = None
    log_prior: Optional[torch.Tensor] = None
    log_q: Optional[torch.Tensor] = None
    #: whether ``kl`` is closed-form for every latent site
    kl_exact: bool = True
    auxiliary: Optional[torch.Tensor] = None
    importance_log_weights: Optional[torch.Tensor] = None

    @property
    def sampled_kl(self) -> torch.Tensor:
        """log q(z_l | x) - log p(z_l) per particle, ``(L, M)``: the KL at the particle."""
        return self.log_q - self.log_prior

    @property
    def elbo(self) -> torch.Tensor:
        """log p(x, z_l) - log q(z_l | x) per particle, ``(L, M)``: its mean over particles is the
        ELBO (estimator A); with discrete sites summed out, the enumerated sum (module docstring)."""
        return self.reconstruction - self.sampled_kl

    @property
    def log_weights(self) -> torch.Tensor:
        """The importance weights' logarithms, ``(L, M)``: each exp(log_weights_l) is an unbiased
        estimate of p(x); by default :attr:`elbo`."""
        return self.elbo if self.importance_log_weights is None else self.importance_log_weights

    @property
    def num_particles(self) -> int:
        return self.reconstruction.shape[0]

    @staticmethod
    def stack(particles) -> "Terms":
        """The terms of L particles drawn one after another (each a ``Terms`` of one particle), as
        one ``Terms`` of L: the same estimate a vectorized pass gives."""
        first = particles[0]

        def cat(name):
            values = [getattr(t, name) for t in particles]
            return None if values[0] is None else torch.cat(values, 0)

        auxiliary = None if first.auxiliary is None else torch.stack([t.auxiliary for t in particles]).mean(0)
        return Terms(cat("reconstruction"), cat("kl"), cat("log_prior"), cat("log_q"),
                     all(t.kl_exact for t in particles), auxiliary, cat("importance_log_weights"))


def _frames(site) -> Dict[str, object]:
    return {f.name: f for f in site["cond_indep_stack"] if f.vectorized}


def per_datapoint(value: torch.Tensor, site, shape: tuple, num_data: int, plate: str = DATA_PLATE,
                  plate_dims: Optional[int] = None, enum_dims: int = 0) -> torch.Tensor:
    """A site's per-element log-density brought to ``shape = (L, M)``: the particle plate's
    dimension first, the data plate's last, every other plate's summed; a site outside the data
    plate counts 1/N (``num_data``) for each datapoint.

    With ``enum_dims`` enumeration dimensions (left of the ``plate_dims`` plate dimensions, as
    Pyro allocates them), those are kept in front: the result is ``(*enum, L, M)``, each
    enumeration dimension of size 1 where the site does not depend on it."""
    frames = _frames(site)
    if plate_dims is None:
        plate_dims = max([value.dim()] + [-f.dim for f in frames.values()])
    total = plate_dims + enum_dims
    value = value.reshape((1,) * (total - value.dim()) + value.shape)
    particles, data = frames.get(PARTICLE_PLATE), frames.get(plate)
    source = [total + f.dim for f in (particles, data) if f is not None]
    target = [d for f, d in ((particles, enum_dims), (data, -1)) if f is not None]
    value = value.movedim(tuple(source), tuple(target)) if source else value
    if particles is None:
        value = value.unsqueeze(enum_dims)
    if data is None:
        value = value.unsqueeze(-1) / num_data
    inner = tuple(range(enum_dims + 1, value.dim() - 1))
    value = value.sum(inner) if inner else value
    return value.expand(*value.shape[:enum_dims], *shape)


def site_weight(site):
    """The scale the program puts on a site beyond its plates' subsample scales N/M (which the
    estimators apply themselves): 1 but under ``poutine.scale`` (Pyro's M2 weighs its auxiliary
    classifier term so) or :class:`~pyrovae.infer.elbos.LatentScale` (the KL weight beta)."""
    subsample = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.vectorized and frame.full_size and frame.size:
            subsample *= frame.full_size / frame.size
    scale = site["scale"]
    if isinstance(scale, (int, float)) and math.isclose(scale, subsample, rel_tol=1e-12):
        return 1.0
    return scale / subsample


def site_log_prob(site) -> torch.Tensor:
    """A site's log-density per element as the program weighs it: ``unscaled_log_prob`` times its
    :func:`site_weight`, masked where it is under ``poutine.mask``."""
    return scale_and_mask(site["unscaled_log_prob"], site_weight(site), site["mask"])


def _per_datapoint_values(value: torch.Tensor, site, m: int) -> Optional[torch.Tensor]:
    """A local site's value-shaped tensor (e.g. its posterior mean) as ``(M, -1)``; None for a
    site outside the data plate."""
    frames = _frames(site)
    data = frames.get(DATA_PLATE)
    if data is None:
        return None
    batch_dims = value.dim() - site["fn"].event_dim
    ndim = max([batch_dims] + [-f.dim for f in frames.values()])
    value = value.reshape((1,) * (ndim - batch_dims) + value.shape)
    return value.movedim(ndim + data.dim, 0).reshape(m, -1)


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) sum_k exp(log_w_k), stably."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


class LogMeanExp:
    """log (1/K) sum_k exp(log_w_k) over log-weights that arrive in chunks along dim 0 (so that
    memory stays bounded at any K): ``add`` each chunk, then read :attr:`value`."""

    def __init__(self):
        self.total: Optional[torch.Tensor] = None
        self.count = 0

    def add(self, log_w: torch.Tensor) -> None:
        chunk = torch.logsumexp(log_w, 0)
        self.total = chunk if self.total is None else torch.logaddexp(self.total, chunk)
        self.count += log_w.shape[0]

    @property
    def value(self) -> torch.Tensor:
        return self.total - math.log(self.count)


def sample_sites(trace) -> Iterable:
    """``(name, site)`` for a trace's sample sites, the plates' subsample sites left out."""
    return ((name, site) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site))


def latent_sites(trace, given: Iterable[str] = ()) -> Dict[str, dict]:
    """A trace's latent sites (unobserved, or given values that stand for samples)."""
    given = set(given)
    return {name: site for name, site in sample_sites(trace) if not site["is_observed"] or name in given}


def enumerated(site) -> bool:
    """Whether a site is marked for parallel enumeration (its values summed out, not sampled)."""
    return site["infer"].get("enumerate") == "parallel"


def closed_form_kl(q, p) -> Optional[torch.Tensor]:
    """KL(q || p) where torch has a closed form, else None."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


def trace_terms(model_trace, guide_trace, num_particles: int, num_points: int, num_data: Optional[int] = None,
                kl: bool = True, given: Iterable[str] = (), plate: str = DATA_PLATE,
                nesting: Optional[int] = None) -> Terms:
    """The :class:`Terms` of a model trace replayed on a guide trace, both with log-densities
    computed and L = ``num_particles`` particles in the plate ``num_particles_vectorized``, or
    one particle and no particle plate (see the module docstring). ``given``: guide sites fixed
    to values (they count as samples); ``plate``: the plate whose entries are the datapoints;
    ``nesting``: the program's plate nesting (where enumeration starts without a particle plate)."""
    shape = (num_particles, num_points)
    n = num_data or num_points
    guide_latent = latent_sites(guide_trace, given)
    enum_guide = {name: site for name, site in guide_latent.items() if "_enumerate_dim" in site["infer"]}
    enum_model = {name: site for name, site in sample_sites(model_trace)
                  if "_enumerate_dim" in site["infer"] and name not in guide_latent}
    for name, site in sample_sites(model_trace):
        if not site["is_observed"] and name not in guide_latent and name not in enum_model:
            what = ("discrete: mark it infer={'enumerate': 'parallel'} so that it is summed out"
                    if site["fn"].support.is_discrete else "continuous: the guide must sample it")
            raise ValueError(f"model site {name!r} is latent but the guide has no site for it; it is {what}")
    for name, site in guide_latent.items():
        if name not in enum_guide and name not in given and not site["fn"].has_rsample:
            raise ValueError(f"guide site {name!r} is not reparameterizable"
                             + ("; mark it infer={'enumerate': 'parallel'} so that it is summed out"
                                if site["fn"].support.is_discrete else "")
                             + "; pyrovae's estimators differentiate through the samples")
    if enum_guide or enum_model:
        return _enumerated_terms(model_trace, guide_latent, enum_guide, enum_model, shape, n, plate, nesting)
    device = next(site["unscaled_log_prob"].device for _, site in sample_sites(model_trace))
    zeros = torch.zeros(shape, device=device)
    log_q, q_per_site = zeros, {}
    for name, site in guide_latent.items():
        q_per_site[name] = per_datapoint(site_log_prob(site), site, shape, n, plate)
        log_q = log_q + q_per_site[name]
    # A site's closed-form KL at the sampled values of the others is unbiased only if every latent
    # site the model samples before it (its possible parents in p) the guide samples before it too:
    # in a bottom-up guide (hvae: q(z1 | x) q(z2 | z1) for p(z2) p(z1 | z2)) KL(q(z1 | x) || p(z1 | z2))
    # at a z2 drawn given z1 is not E_q[log q(z1 | x) - log p(z1 | z2)]; such a site takes log q - log p.
    guide_order = {name: i for i, name in enumerate(q_per_site)}
    latest = -1  # the guide position of the latest latent site the model has sampled so far
    reconstruction = log_prior = kl_total = zeros
    exact = True
    for name, site in sample_sites(model_trace):
        per = per_datapoint(site_log_prob(site), site, shape, n, plate)
        if name not in q_per_site:
            reconstruction = reconstruction + per
            continue
        log_prior = log_prior + per
        if kl:
            q_site = guide_latent[name]
            weights = [site_weight(one) for one in (q_site, site)]
            alike = site["mask"] is None and q_site["mask"] is None \
                and all(isinstance(w, float) for w in weights) and math.isclose(weights[0], weights[1])
            closed = closed_form_kl(q_site["fn"], site["fn"]) if guide_order[name] > latest and alike else None
            if closed is not None:  # weighed as the program weighs both sites
                kl_total = kl_total + per_datapoint(closed * weights[0], q_site, shape, n, plate)
            else:
                exact = False
                kl_total = kl_total + q_per_site[name] - per
        latest = max(latest, guide_order[name])
    return Terms(reconstruction, kl_total if kl else None, log_prior, log_q, exact)


def _enumerated_terms(model_trace, guide_latent, enum_guide, enum_model, shape, n, plate,
                      nesting: Optional[int] = None) -> Terms:
    """:func:`trace_terms` with discrete sites summed out (the module docstring's sums)."""
    particle_dims = [-f.dim for _, site in sample_sites(model_trace) for f in site["cond_indep_stack"]
                     if f.name == PARTICLE_PLATE]
    if not particle_dims and nesting is None:  # one particle, no particle plate: the plates' own nesting
        nesting = max((-f.dim for _, site in sample_sites(model_trace) for f in site["cond_indep_stack"]
                       if f.vectorized), default=0)
    plate_dims = max(particle_dims) if particle_dims else nesting + 1  # the particle plate's place, used or not
    dims = [site["infer"]["_enumerate_dim"] for site in (*enum_guide.values(), *enum_model.values())]
    enum_dims = -min(dims) - plate_dims
    for name, site in (*enum_guide.items(), *enum_model.items()):
        others = sorted(set(_frames(site)) - {PARTICLE_PLATE, plate})
        if plate not in _frames(site) or others:
            where = f"under the plate {others[0]!r}" if others else f"outside the plate {plate!r}"
            raise ValueError(f"enumerated site {name!r} is {where}; pyrovae sums out discrete sites with one value "
                             f"per datapoint (inside the plate {plate!r} and no other)")

    def points(site):
        return per_datapoint(site_log_prob(site), site, shape, n, plate, plate_dims, enum_dims)

    position = lambda site: enum_dims + plate_dims + site["infer"]["_enumerate_dim"]  # noqa: E731
    summed = tuple(sorted({position(site) for site in enum_model.values()}))
    joint = latent = 0.0
    for name, site in sample_sites(model_trace):
        value = points(site)
        joint = joint + value
        if name in guide_latent or name in enum_model:
            latent = latent + value
    if summed:  # log sum_{y_m}: the model's own discrete sites, given z and y_g
        joint, latent = torch.logsumexp(joint, summed, keepdim=True), torch.logsumexp(latent, summed, keepdim=True)
    zeros = torch.zeros(shape, device=joint.device)
    log_q_z = sum((points(site) for name, site in guide_latent.items() if name not in enum_guide), zeros)
    log_q_y = sum((points(site) for site in enum_guide.values()), zeros)
    lead = tuple(range(enum_dims))

    def expected(value):  # sum_{y_g} q(y_g | x) value
        value = torch.exp(log_q_y) * value if enum_guide else value
        return value.sum(lead).expand(shape) if lead else value.expand(shape)

    log_w = joint - log_q_z
    log_weights = torch.logsumexp(log_w, lead).expand(shape) if lead else log_w.expand(shape)
    log_prior, log_q = expected(latent), expected(log_q_z + log_q_y)
    reconstruction = expected(joint - latent)
    return Terms(reconstruction, log_q - log_prior, log_prior, log_q, kl_exact=False,
                 importance_log_weights=log_weights)
