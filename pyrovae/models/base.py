"""``pyrovae.Model``: the base of every model family, and what pyrovae reads off its traces.

A family is a Pyro program over a minibatch: ``model(batch, num_data)`` samples its local
latent sites and observes the data under the plate "data" (``self.data_plate``), which scales
every site by N/M; ``guide(batch, num_data)`` is the amortized posterior q(z | x) under the
same plate. From these two functions alone, :meth:`Model.terms` derives everything the rest
of pyrovae needs, per datapoint and unscaled, for L particles drawn in one vectorized pass:

- ``reconstruction``: log p(x | z), the observed sites;
- ``log_prior``: log p(z), the model's latent sites;
- ``log_q``: log q(z | x), the guide's latent sites;
- ``kl``: KL(q || p) site by site, in closed form where Pyro has one (else log q - log p at
  the particle, as in Pyro's ``TraceMeanField_ELBO``); ``kl_exact`` says whether every site had one.

The estimators (analytic, mc, iwae), training, evaluation (ELBO, IWAE_k, NLL), active units
and sampling use only :meth:`terms`, :meth:`encode`, :meth:`sample` and :meth:`reconstruct`.
A family may override any of them with closed forms for speed; a test then ties the override
to the trace-derived value, in value and gradient (``tests/test_families.py``).

Per-datapoint values come from each site's plates: the particle plate's dimension gives the
particles, the data plate's dimension the datapoints, and every other plate's dimension is
summed. A latent site outside the data plate (a global latent) is shared by all N datapoints:
its log-density is divided by N and added to each, so that (N/M) sum over a minibatch of the
per-datapoint terms is still an unbiased estimate of the full-data ELBO.
"""

import functools
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import pyro
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import TransformedDistribution, kl_divergence

from ..data import Batch, as_batch

DATA_PLATE = "data"
PARTICLE_PLATE = "num_particles_vectorized"  # the name Pyro's own ELBOs give the particle plate


def data_plate(x, num_data: Optional[int] = None, name: str = DATA_PLATE) -> pyro.plate:
    """The plate "data" of size ``num_data`` (or M) with the minibatch as its subsample.

    Every site sampled inside it is scaled by ``num_data / M``, so a Pyro ELBO of the
    minibatch is an unbiased estimate of the full-data ELBO (Kingma & Welling 2014, eq. 8).
    ``x`` is the minibatch (a tensor whose first dimension is M, or a :class:`~pyrovae.Batch`).
    Passing the subsample indices rather than ``subsample_size`` avoids a ``randperm(N)`` per step.
    """
    x = x.x if isinstance(x, Batch) else x
    size = x.shape[0]
    return pyro.plate(name, size=num_data or size, subsample=torch.arange(size, device=x.device))


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
    def log_ratio(self) -> torch.Tensor:
        """log p(x, z_l) - log q(z_l | x) per particle, ``(L, M)``: its mean over particles is the ELBO."""
        return self.reconstruction + self.log_prior - self.log_q

    @property
    def log_weights(self) -> torch.Tensor:
        """The importance weights' logarithms, ``(L, M)``: each exp(log_weights_l) is an unbiased
        estimate of p(x); by default :attr:`log_ratio`."""
        return self.log_ratio if self.importance_log_weights is None else self.importance_log_weights

    @property
    def num_particles(self) -> int:
        return self.reconstruction.shape[0]


def _frames(site) -> Dict[str, object]:
    return {f.name: f for f in site["cond_indep_stack"] if f.vectorized}


def per_datapoint(value: torch.Tensor, site, shape: tuple, num_data: int, plate: str = DATA_PLATE) -> torch.Tensor:
    """A site's per-element log-density brought to ``shape = (L, M)``: the particle plate's
    dimension first, the data plate's last, every other plate's summed; a site outside the data
    plate counts 1/N (``num_data``) for each datapoint."""
    frames = _frames(site)
    ndim = max([value.dim()] + [-f.dim for f in frames.values()])
    value = value.reshape((1,) * (ndim - value.dim()) + value.shape)
    particles, data = frames.get(PARTICLE_PLATE), frames.get(plate)
    source = [ndim + f.dim for f in (particles, data) if f is not None]
    target = [d for f, d in ((particles, 0), (data, -1)) if f is not None]
    value = value.movedim(tuple(source), tuple(target)) if source else value
    if particles is None:
        value = value.unsqueeze(0)
    if data is None:
        value = value.unsqueeze(-1) / num_data
    inner = tuple(range(1, value.dim() - 1))
    return (value.sum(inner) if inner else value).expand(shape)


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


class Model(PyroModule):
    """The base of every model family: a Pyro ``model`` and ``guide`` over a minibatch.

    Subclass it, write ``model(batch, num_data=None)`` and ``guide(batch, num_data=None)``
    with the local sites inside ``self.data_plate(batch, num_data)``, and register the class
    with ``@pyrovae.MODELS.register("name")`` to name it in a config (``[model] family``).
    ``batch`` is a :class:`~pyrovae.Batch` (``.x``, ``.y`` labels or None, ``.labeled``
    mask or None); a plain tensor is accepted for ``x`` alone.

    :param tuple event_shape: the shape of one data point.
    :param str name: the Pyro name prefix of the parameters.
    """

    #: the observed site that :meth:`sample` and :meth:`reconstruct` return
    observed_site = "x"
    #: how many plates model and guide nest, where a family knows it (else one trace finds out)
    plate_nesting: Optional[int] = None

    def __init_subclass__(cls, **kwargs):
        """A family's ``model`` and ``guide`` run in the module's Pyro context (as with
        ``@pyro_method``), so that its parameters reach Pyro's param store under plain SVI."""
        super().__init_subclass__(**kwargs)
        for name in ("model", "guide"):
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_pyrovae_method", False):
                wrapped = pyro_method(fn)
                wrapped._pyrovae_method = True
                setattr(cls, name, wrapped)
        if cls.guide is Model.guide:
            # a family without a guide gets an AmortizedGuide, built when its constructor is done
            # (so that its parameters exist before an optimizer or a checkpoint meets them)
            init = cls.__init__

            @functools.wraps(init)
            def __init__(self, *args, **kwargs):
                init(self, *args, **kwargs)
                if type(self) is cls:
                    self.build_guide()

            cls.__init__ = __init__

    def __init__(self, event_shape: Sequence[int], name: str = ""):
        super().__init__(name)
        self.event_shape = tuple(int(s) for s in event_shape)
        self.event_dim = len(self.event_shape)
        self._max_plate_nesting: Optional[int] = None

    # -- the Pyro program (a family writes these) ------------------------------------------
    def model(self, batch, num_data: Optional[int] = None):
        raise NotImplementedError(f"{type(self).__name__} defines no model")

    #: the encoder of the :class:`~pyrovae.AmortizedGuide` built for a family that defines no
    #: guide (any registered encoder spec; set it in the constructor to make it an option)
    guide_encoder = "mlp"

    def guide(self, batch, num_data: Optional[int] = None):
        """q(latents | x): a family writes it, or leaves it out and gets an
        :class:`~pyrovae.AmortizedGuide` of its model (:meth:`build_guide`)."""
        amortized = getattr(self, "amortized_guide", None)
        if amortized is None:
            raise NotImplementedError(f"{type(self).__name__} defines no guide; call build_guide() "
                                      "for an AmortizedGuide of its model")
        return amortized(batch, num_data)

    def build_guide(self, batch=None) -> None:
        """Build an :class:`~pyrovae.AmortizedGuide` of :meth:`model` as this family's guide,
        tracing the model on ``batch`` (default: 2 blank points of ``event_shape``, with labels
        0 if the family has ``num_classes``)."""
        from ..amortized import AmortizedGuide

        classes = getattr(self, "num_classes", None)
        if batch is None:
            x = torch.zeros((2, *self.event_shape), device=self.device)
            batch = Batch(x, torch.zeros(2, dtype=torch.long, device=x.device) if classes else None)
        self.amortized_guide = AmortizedGuide(self.model, encoder=self.guide_encoder, num_classes=classes)
        self.amortized_guide.setup(as_batch(batch), None)
        self._max_plate_nesting = None

    def data_plate(self, batch, num_data: Optional[int] = None) -> pyro.plate:
        """The plate "data" of size ``num_data`` (or M) with the minibatch as its subsample:
        every site inside it is scaled by N/M (see :func:`pyrovae.data_plate`)."""
        return data_plate(batch, num_data)

    # -- derived from traces ---------------------------------------------------------------
    def max_plate_nesting(self, batch) -> int:
        """How many plates the model and guide nest (from one trace, then remembered)."""
        if self.plate_nesting is not None:
            return self.plate_nesting
        if self._max_plate_nesting is None:
            with torch.no_grad(), poutine.block(), torch.random.fork_rng(devices=[]):  # leaves the RNG as it was
                traces = [poutine.trace(fn).get_trace(batch, None) for fn in (self.guide, self.model)]
            dims = [-f.dim for t in traces for site in t.nodes.values() if site["type"] == "sample"
                    for f in site["cond_indep_stack"] if f.vectorized]
            self._max_plate_nesting = max(dims, default=0)
        return self._max_plate_nesting

    def _vectorized(self, fn, num_particles: int, nesting: int):
        def wrapped(batch, num_data):
            with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(nesting + 1)):
                return fn(batch, num_data)
        return wrapped

    def traces(self, batch, num_particles: int = 1, num_data: Optional[int] = None,
               values: Optional[Dict[str, torch.Tensor]] = None):
        """``(model_trace, guide_trace)`` for L = ``num_particles`` vectorized particles, with
        log-densities computed; ``values`` fixes guide sites to given (reparameterized) values."""
        batch = as_batch(batch)
        nesting = self.max_plate_nesting(batch)
        guide = self._vectorized(self.guide, num_particles, nesting)
        if values:
            guide = poutine.condition(guide, data=values)
        guide_trace = poutine.trace(guide).get_trace(batch, num_data)
        for name in values or ():  # given values stand for samples: latent, not observed
            guide_trace.nodes[name]["is_observed"] = False
        model = poutine.replay(self._vectorized(self.model, num_particles, nesting), trace=guide_trace)
        model_trace = poutine.trace(model).get_trace(batch, num_data)
        for trace in (guide_trace, model_trace):
            trace.compute_log_prob(lambda name, site: not isinstance(site["fn"], _Subsample))
        return model_trace, guide_trace

    def terms(self, batch, num_particles: int = 1, num_data: Optional[int] = None, kl: bool = True,
              noise: Optional[torch.Tensor] = None, values: Optional[Dict[str, torch.Tensor]] = None) -> Terms:
        """The ELBO's terms per particle and datapoint, read off traces of the guide and of the
        model replayed on it (see the module docstring). ``noise`` is for families that draw
        their own (the training loop passes what :meth:`noise_shape` asks for); the general
        path samples through Pyro. ``values`` fixes guide sites (as ``poutine.condition``)."""
        batch = as_batch(batch)
        model_trace, guide_trace = self.traces(batch, num_particles, num_data, values)
        m = batch.x.shape[0]
        n = num_data or m
        shape = (num_particles, m)
        zero = batch.x.new_zeros(shape)
        reconstruction, log_prior, log_q, kl_total, exact = zero, zero, zero, zero, True
        q_per_site = {}  # each latent site's log q, (L, M)
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not isinstance(site["fn"], _Subsample) and not site["is_observed"]:
                if name not in (values or {}) and not site["fn"].has_rsample:
                    raise ValueError(f"guide site {name!r} is not reparameterizable; pyrovae's estimators "
                                     "differentiate through the samples")
                q_per_site[name] = per_datapoint(site["unscaled_log_prob"], site, shape, n)
                log_q = log_q + q_per_site[name]
        # A site's closed-form KL at the sampled values of the others is unbiased only if every latent
        # site the model samples before it (its possible parents in p) the guide samples before it too:
        # in a bottom-up guide (hvae: q(z1 | x) q(z2 | z1) for p(z2) p(z1 | z2)) KL(q(z1 | x) || p(z1 | z2))
        # at a z2 drawn given z1 is not E_q[log q(z1 | x) - log p(z1 | z2)]; such a site takes log q - log p.
        guide_order = {name: i for i, name in enumerate(q_per_site)}
        latest = -1  # the guide position of the latest latent site the model has sampled so far
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
                continue
            per = per_datapoint(site["unscaled_log_prob"], site, shape, n)
            if name not in q_per_site:
                if not site["is_observed"]:
                    raise ValueError(f"model site {name!r} is latent but the guide has no site for it (a discrete "
                                     "site marked for enumeration?); pyrovae's estimators need every latent site "
                                     "in the guide: sum it out in the family's terms (as m2 does), or train the "
                                     "model and guide with Pyro's TraceEnum_ELBO")
                reconstruction = reconstruction + per
                continue
            log_prior = log_prior + per
            if kl:
                q_site = guide_trace.nodes[name]
                closed = _closed_form_kl(q_site["fn"], site["fn"]) if guide_order[name] > latest else None
                if closed is not None:
                    kl_total = kl_total + per_datapoint(closed, q_site, shape, n)
                else:
                    exact = False
                    kl_total = kl_total + q_per_site[name] - per
            latest = max(latest, guide_order[name])
        return Terms(reconstruction, kl_total if kl else None, log_prior, log_q, exact)

    def has_analytic_kl(self, batch) -> bool:
        """Whether every latent site's KL(q || p) has a closed form (what ``auto`` asks)."""
        with torch.no_grad():
            return self.terms(batch, 1, kl=True).kl_exact

    def noise_shape(self, batch_size: int, num_particles: int) -> Optional[tuple]:
        """The shape of the standard normal noise :meth:`terms` takes as ``noise`` (None: it
        draws its own). The training loop draws it for the whole global batch from its own
        generator, so that K processes see the noise of one."""
        return None

    def dry_run(self, batch) -> None:
        """Run the model's terms on a small batch with 2 particles: a family whose model, guide or
        networks do not fit the data fails here, in one ConfigError line, not deep inside training."""
        from ..errors import ConfigError, PyrovaeError, one_line

        try:
            with torch.no_grad():
                self.terms(batch, 2, kl=False)
        except PyrovaeError:
            raise
        except Exception as e:  # a family's own code can fail in any way
            raise ConfigError(f"model ({type(self).__name__}): a dry batch of {len(as_batch(batch))} points with 2 "
                              f"particles fails ({type(e).__name__}: {one_line(str(e), 200)})") from None

    def prepare(self, data) -> None:
        """Called by the loop with the training :class:`~pyrovae.Dataset` before the first step of
        a new run (M2 counts its labels here); what it sets must live in the state dict, so that a
        loaded model has it. By default nothing."""

    def scoring_batch(self, batch) -> Batch:
        """The batch that test scores (ELBO, IWAE, NLL, active units) are computed on: the batch
        itself, or (M2) the points without their labels, so that the scores bound log p(x)."""
        return as_batch(batch)

    def check_data(self, x: torch.Tensor, where: str = "data") -> None:
        """Raise :class:`~pyrovae.DataError` for data this model cannot score (the ``vae`` family
        checks its likelihood's support); by default nothing is checked."""

    # -- what evaluation and the figures use ---------------------------------------------------
    def latent_sites(self, batch) -> Dict[str, dict]:
        """The guide's latent sites (name -> trace node) for a batch."""
        with torch.no_grad():
            guide_trace = poutine.trace(self.guide).get_trace(as_batch(batch), None)
        return {name: site for name, site in guide_trace.nodes.items()
                if site["type"] == "sample" and not site["is_observed"] and not isinstance(site["fn"], _Subsample)}

    @torch.no_grad()
    def encode(self, batch) -> torch.Tensor:
        """The posterior means E_q[z | x] of every local latent site, flattened and
        concatenated: ``(M, D)`` (what active units are computed from)."""
        batch = as_batch(batch)
        m = batch.x.shape[0]
        sites = self.latent_sites(batch).values()
        means = [_per_datapoint_values(posterior_mean(site["fn"]), site, m) for site in sites]
        means = [v for v in means if v is not None]
        return torch.cat(means, -1) if means else batch.x.new_zeros((m, 0))

    @torch.no_grad()
    def reconstruct(self, batch) -> torch.Tensor:
        """E[x | z = E_q[z | x]]: the observed site's mean with every latent site at its posterior mean."""
        batch = as_batch(batch)
        values = {name: posterior_mean(site["fn"]) for name, site in self.latent_sites(batch).items()}
        trace = poutine.trace(poutine.condition(self.model, data=values)).get_trace(batch, None)
        return self._as_data(_mean_or_sample(trace.nodes[self.observed_site]["fn"]), len(batch))

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True, batch=None, y=None) -> torch.Tensor:
        """Draw from the model: the observed site's mean E[x | z] (``mean=True``) or a sample of
        it, z ~ p(z). ``batch`` supplies what the model conditions on besides x (labels); or
        ``y``, the labels of a family that reads them (one int, or ``num_samples``; default the
        classes in turn: 0, 1, ..., C-1, 0, ...)."""
        classes = getattr(self, "num_classes", None)
        if y is not None and not classes:
            raise ValueError(f"y: {type(self).__name__} reads no labels (it has no num_classes)")
        if batch is None:
            y = labels_for(num_samples, y, classes, self.device) if classes else None
            batch = Batch(torch.zeros((num_samples, *self.event_shape), device=self.device), y)
        trace = poutine.trace(poutine.uncondition(self.model)).get_trace(as_batch(batch), None)
        site = trace.nodes[self.observed_site]
        return self._as_data(_mean_or_sample(site["fn"]) if mean else site["value"], num_samples)

    def _as_data(self, values: torch.Tensor, m: int) -> torch.Tensor:
        """The observed site's values in the data's shape ``(M, *event_shape)`` (a family may flatten x)."""
        return values.reshape(m, *self.event_shape) if values.numel() == m * math.prod(self.event_shape) else values

    @property
    def device(self) -> torch.device:
        param = next(self.parameters(), None)
        if param is not None:
            return param.device
        buffer = next(self.buffers(), None)
        return buffer.device if buffer is not None else torch.device("cpu")


def labels_for(num_samples: int, y, num_classes: int, device) -> torch.Tensor:
    """The labels to draw ``num_samples`` points for: ``y`` an int (every point that class), a
    sequence or tensor of ``num_samples`` labels, or None (the classes in turn: 0, 1, ..., C-1, 0, ...)."""
    if y is None:
        return torch.arange(num_samples, device=device) % num_classes
    y = torch.as_tensor(y, device=device).long()
    if y.dim() == 0:
        y = y.expand(num_samples)
    if y.shape != (num_samples,):
        raise ValueError(f"y: expected one label or {num_samples} labels, got shape {tuple(y.shape)}")
    if y.numel() and not (0 <= int(y.min()) and int(y.max()) < num_classes):
        raise ValueError(f"y: labels must be in [0, {num_classes}), got {int(y.min())}..{int(y.max())}")
    return y


def _closed_form_kl(q, p) -> Optional[torch.Tensor]:
    """KL(q || p) where torch has a closed form, else None."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


def posterior_mean(fn) -> torch.Tensor:
    """A latent site's mean E_q[z]; for a flow (e.g. IAF), whose mean has no closed form, the
    flow's image of its base distribution's mean (deterministic, as a point estimate should be)."""
    try:
        return fn.mean
    except NotImplementedError:
        if not isinstance(fn, TransformedDistribution):
            raise
        value = posterior_mean(fn.base_dist)
        for transform in fn.transforms:
            value = transform(value)
        return value


def _mean_or_sample(fn) -> torch.Tensor:
    try:
        return fn.mean
    except NotImplementedError:
        return fn.sample()


def log_mean_exp(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) sum_k exp(log_w_k), stably."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])
