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
import inspect
import math
import warnings
from typing import Any, Dict, List, Optional, Sequence

import pyro
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.nn import PyroModule, pyro_method
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.uncondition_messenger import UnconditionMessenger
from pyro.poutine.util import site_is_subsample
from pyro.util import check_model_guide_match
from torch.distributions import TransformedDistribution

from pyrovae.data.batch import Batch, NeedsData, as_batch
from pyrovae.errors import ConfigError, PyrovaeError, one_line
from pyrovae.models.amortized import AmortizedGuide
from pyrovae.models.terms import (
    DATA_PLATE,
    PARTICLE_PLATE,
    Terms,
    _per_datapoint_values,
    data_plate,
    enumerated,
    latent_sites,
    sample_sites,
    trace_terms,
)


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

    #: the observed site that :meth:`sample`, :meth:`reconstruct` and the figures return; None: the
    #: one observed site under the plate "data", found from a trace of the model (:meth:`observed_name`)
    observed_site: Optional[str] = None
    #: how many plates model and guide nest, where a family knows it (else one trace finds out)
    plate_nesting: Optional[int] = None
    #: the ``[train]`` settings the family trains with under a label budget (``data.labeled``) where
    #: the config leaves them out (M2: labelled points in every minibatch, the balanced weight);
    #: ``labeled_per_batch`` is at most half the minibatch
    labeled_training: Dict[str, Any] = {}
    #: the ``data.binarize`` the family trains with under a label budget in place of a *dynamic*
    #: default, where the config leaves it unset (M2: ``"threshold"``, so that the classifier sees each
    #: image as one fixed binary image, in training and at test, not a fresh random draw); None: keep it
    binarize_under_budget: Optional[str] = None

    @classmethod
    def training_under_budget(cls, given, batch_size: int, engine: str = "torch") -> Dict[str, Any]:
        """The :attr:`labeled_training` keys not among ``given`` (those a config or call sets), with
        ``labeled_per_batch`` at most half the minibatch ``batch_size`` (none where the family takes
        labels per minibatch)."""
        fill = {k: v for k, v in cls.labeled_training.items() if k not in given}
        if cls.labels_under(engine) == "per_minibatch":  # its minibatches are all labelled or all unlabelled
            fill.pop("labeled_per_batch", None)
        elif engine == "pyro":  # Pyro's ELBOs weigh no points inside a mixed minibatch
            return {}
        if "labeled_per_batch" in fill:
            fill["labeled_per_batch"] = max(0, min(fill["labeled_per_batch"], batch_size // 2))
        return fill

    def __init_subclass__(cls, **kwargs):
        """A family's ``model`` and ``guide`` run in the module's Pyro context (as with
        ``@pyro_method``), so that its parameters reach Pyro's param store under plain SVI, and
        always get a :class:`~pyrovae.Batch` (a plain tensor of points is taken as ``x``). The
        guide's discrete sites with a finite support that carry no mark of their own are marked
        ``infer={"enumerate": "parallel"}``, as Pyro's examples do with ``config_enumerate(guide)``
        outside the class (Pyro's SS-VAE): their values are summed out, the exact expectation that
        a sampled value (a score-function estimate, which pyrovae's estimators cannot
        differentiate) would estimate."""
        super().__init_subclass__(**kwargs)
        for name in ("model", "guide"):
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_pyrovae_method", False):
                if name == "guide":  # its discrete sites summed out, as Pyro's config_enumerate(guide) marks them
                    fn = config_enumerate(fn, default="parallel")
                wrapped = pyro_method(_with_batch(fn))
                wrapped._pyrovae_method = True
                setattr(cls, name, wrapped)
        # When the constructor is done: a family that takes num_classes has it recorded as
        # ``num_classes`` (whatever it calls it), and a family without a guide gets an AmortizedGuide
        # (so that its parameters exist before an optimizer or a checkpoint meets them).
        init = cls.__init__
        takes_classes = "num_classes" in inspect.signature(init).parameters
        builds_guide = cls.guide is Model.guide
        if takes_classes or builds_guide:
            @functools.wraps(init)
            def __init__(self, *args, **kwargs):
                init(self, *args, **kwargs)
                if type(self) is cls:
                    if takes_classes:
                        bound = inspect.signature(init).bind(self, *args, **kwargs)
                        bound.apply_defaults()
                        self._record_classes(bound.arguments["num_classes"])
                    if builds_guide:
                        self.build_guide()

            cls.__init__ = __init__

    def _record_classes(self, num_classes: Optional[int]) -> None:
        """``num_classes`` as pyrovae reads it, set unless the family set it itself, to the same value."""
        if num_classes is None:
            return
        mine = getattr(self, "num_classes", None)
        if mine is None:
            self.num_classes = int(num_classes)
        elif mine != num_classes:
            raise ConfigError(f"model: {type(self).__name__}.num_classes = {mine!r}, but it was built for "
                              f"{num_classes} classes (pyrovae reads num_classes as the number of classes)")

    #: whether the model and guide run L particles at once, in a particle plate left of their own
    #: plates (True, as under Pyro's ``vectorize_particles=True``), or not (False: the particles run
    #: one after another, as under ``vectorize_particles=False``); None: as the dry run shows. With
    #: one particle, the default, a family never sees a particle dimension either way.
    vectorizable: Optional[bool] = None
    #: how the family takes labels (``batch.y``): ``"per_point"`` (the default), any minibatch,
    #: each point's label usable where ``batch.labeled`` says so (None: all); or ``"per_minibatch"``,
    #: as Pyro's M2 example takes them: under a label budget every training minibatch is all
    #: labelled (``batch.y`` set, ``batch.labeled`` all true) or all unlabelled (``batch.y`` None),
    #: in a fixed seeded proportion (:func:`pyrovae.data.sampling.split_plan`); its test scores are
    #: computed without labels (log p(x)), and where it has no ``classify`` its guide's q(y | x)
    #: classifies (:meth:`label_site`)
    labels: str = "per_point"

    @classmethod
    def labels_under(cls, engine: str) -> str:
        """How the family takes labels under ``train.engine`` (``"torch"`` or ``"pyro"``): its
        :attr:`labels` (M2: per point under the torch engine, whose terms mix them; per minibatch
        under Pyro's, whose program is Pyro's ss_vae_M2)."""
        return cls.labels

    def __init__(self, event_shape: Sequence[int], name: str = ""):
        super().__init__(name)
        self.event_shape = tuple(int(s) for s in event_shape)
        self.event_dim = len(self.event_shape)
        self._max_plate_nesting: Optional[int] = None
        #: whether L > 1 particles run vectorized (None: not yet known), and why not
        self.particles_vectorized: Optional[bool] = self.vectorizable
        self.particles_note: Optional[str] = None

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

        classes = getattr(self, "num_classes", None)
        if batch is None:
            batch = self._blank_batch(2)
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
            dims = [-f.dim for t in self._prototype_traces(batch) for _, site in sample_sites(t)
                    for f in site["cond_indep_stack"] if f.vectorized]
            self._max_plate_nesting = max(dims, default=0)
        return self._max_plate_nesting

    def enumerated_sites(self, batch) -> List[str]:
        """The model's and the guide's sites marked ``infer={"enumerate": "parallel"}`` (summed out)
        on ``batch`` (one batch, or a list: the sites of any of them; a family that takes
        all-labelled and all-unlabelled minibatches enumerates its label only on the latter)."""
        batches = batch if isinstance(batch, (list, tuple)) else [batch]
        return sorted({name for b in batches for t in self._prototype_traces(b) for name, site in sample_sites(t)
                       if enumerated(site)})

    def _prototype_traces(self, batch):
        """Plain traces of the guide and the model on ``batch``, leaving the RNG as it was."""
        with torch.no_grad(), poutine.block(), torch.random.fork_rng(devices=[]):
            return [poutine.trace(fn).get_trace(as_batch(batch), None) for fn in (self.guide, self.model)]

    def _vectorized(self, fn, num_particles: int, nesting: int):
        def wrapped(batch, num_data):
            with pyro.plate(PARTICLE_PLATE, num_particles, dim=-(nesting + 1)):
                return fn(batch, num_data)
        return wrapped

    def traces(self, batch, num_particles: int = 1, num_data: Optional[int] = None,
               values: Optional[Dict[str, torch.Tensor]] = None):
        """``(model_trace, guide_trace)`` for L = ``num_particles`` vectorized particles (one
        particle: no particle plate, so the programs see the batch's own shapes), with
        log-densities computed; ``values`` fixes guide sites to given (reparameterized) values.
        Sites marked ``infer={"enumerate": "parallel"}`` are enumerated as in ``TraceEnum_ELBO``:
        the guide's in the dimensions left of the plates and the particles, the model's own left
        of those."""
        batch = as_batch(batch)
        nesting = self.max_plate_nesting(batch)
        guide = self._vectorized(self.guide, num_particles, nesting) if num_particles > 1 else self.guide
        if values:
            guide = poutine.condition(guide, data=values)
        guide_trace = poutine.trace(EnumMessenger(first_available_dim=-(nesting + 2))(guide)).get_trace(batch, num_data)
        for name in values or ():  # given values stand for samples: latent, not observed
            guide_trace.nodes[name]["is_observed"] = False
        model = self._vectorized(self.model, num_particles, nesting) if num_particles > 1 else self.model
        model = poutine.replay(model, trace=guide_trace)
        model_trace = poutine.trace(EnumMessenger()(model)).get_trace(batch, num_data)  # the guide's dims kept
        for trace in (guide_trace, model_trace):
            trace.compute_log_prob(lambda name, site: not site_is_subsample(site))
        return model_trace, guide_trace

    def terms(self, batch, num_particles: int = 1, num_data: Optional[int] = None, kl: bool = True,
              noise: Optional[torch.Tensor] = None, values: Optional[Dict[str, torch.Tensor]] = None) -> Terms:
        """The ELBO's terms per particle and datapoint, read off traces of the guide and of the
        model replayed on it (:func:`~pyrovae.models.terms.trace_terms`), discrete sites marked
        for enumeration summed out. ``noise`` is for families that draw their own (the training
        loop passes what :meth:`noise_shape` asks for); the general path samples through Pyro.
        ``values`` fixes guide sites (as ``poutine.condition``)."""
        batch = as_batch(batch)
        if num_particles > 1 and not self.vectorized_for(batch, num_data):
            return Terms.stack([self.terms(batch, 1, num_data, kl, None, _particle(values, i))
                                for i in range(num_particles)])
        model_trace, guide_trace = self.traces(batch, num_particles, num_data, values)
        return trace_terms(model_trace, guide_trace, num_particles, batch.x.shape[0], num_data, kl, values or (),
                           nesting=self.max_plate_nesting(batch))

    def vectorized_for(self, batch, num_data: Optional[int] = None) -> bool:
        """Whether L > 1 particles run in one vectorized pass: as the family declares
        (:attr:`vectorizable`), else as a 2-particle pass on ``batch`` shows, once (a family whose
        code assumes the batch's own shapes, a ``BatchNorm1d`` or a mask over (M, D), fails it and
        runs its particles one after another; :attr:`particles_note` says why)."""
        if self.particles_vectorized is None:
            try:
                with torch.no_grad(), torch.random.fork_rng(devices=[]), poutine.block():
                    model_trace, guide_trace = self.traces(as_batch(batch), 2, num_data)
                    trace_terms(model_trace, guide_trace, 2, len(as_batch(batch)), num_data, False,
                                nesting=self.max_plate_nesting(batch))
                self.particles_vectorized = True
            except Exception as e:  # a family's own code can fail in any way on a particle dimension
                self.particles_vectorized = False
                self.particles_note = f"{type(e).__name__}: {one_line(str(e), 120)}"
        return self.particles_vectorized

    def importance_sampler(self, batch, num_data: Optional[int] = None):
        """A function ``draw(k)`` that gives the log importance weights log p(x, z_j) - log q(z_j | x)
        of k fresh samples z_j ~ q(z | x) for each point of ``batch``, shape ``(k, M)``, as many times as
        it is called (:func:`pyrovae.log_likelihood` calls it chunk after chunk). Here: :meth:`terms`
        per call; a family with closed forms encodes the batch once instead (``VAE``)."""
        return lambda k: self.terms(batch, k, num_data, kl=False).log_weights

    def has_closed_form_kl(self, batch=None) -> bool:
        """Whether every latent site's KL(q || p) has a closed form (what ``auto`` asks), from the
        terms of ``batch`` (default: 2 blank points)."""
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return self.terms(self._blank_batch(2) if batch is None else batch, 1, kl=True).kl_exact

    def noise_shape(self, batch_size: int, num_particles: int) -> Optional[tuple]:
        """The shape of the standard normal noise :meth:`terms` takes as ``noise`` (None: it
        draws its own). The training loop draws it for the whole global batch from its own
        generator, so that K processes see the noise of one."""
        return None

    def dry_run(self, batch, num_data: Optional[int] = None) -> None:
        """Check the family's contract on a small batch, when the model is built: its terms with one
        particle (the batch's own shapes) compute, every guide site is a model site (Pyro's
        ``check_model_guide_match``), its local sites are under a subsampled plate "data" (size
        ``num_data``, scaled by N/M), and its observed site is found; then whether L > 1 particles
        can run vectorized (:meth:`vectorized_for`; a family that declares ``vectorizable = True``
        must). A family that breaks it fails here, in one ConfigError line naming the site, not
        deep inside training or after it. ``batch`` may be a list: every batch is checked (a family
        that takes labels per minibatch, on a labelled and an unlabelled one), and L > 1 particles
        run vectorized only if they can on all of them."""
        if isinstance(batch, (list, tuple)):
            shown = []
            for one in batch:
                self.dry_run(one, num_data)
                shown.append(self.particles_vectorized)
            self.particles_vectorized = all(shown)
            return
        batch = as_batch(batch)
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                self.terms(batch, 1, num_data, kl=False)
                model_trace, guide_trace = self.traces(batch, 1, num_data)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting(batch) + 1)
        except PyrovaeError:
            raise
        except Exception as e:  # a family's own code can fail in any way
            raise ConfigError(f"model ({type(self).__name__}): a dry batch of {len(batch)} points "
                              f"fails ({type(e).__name__}: {one_line(str(e), 200)})") from None
        if self.vectorizable is not False:  # shown on this batch, and a declaration checked
            self.particles_vectorized = None
            if not self.vectorized_for(batch, num_data) and self.vectorizable:
                raise ConfigError(f"model ({type(self).__name__}) declares vectorizable = True, but 2 particles in a "
                                  f"particle plate fail ({self.particles_note}); declare vectorizable = False to "
                                  "run them one after another")
        for warning in caught:
            if "not model" in str(warning.message):
                names = str(warning.message).split(":", 1)[-1].strip()
                raise ConfigError(f"model ({type(self).__name__}): the guide samples {one_line(names, 80)}, which the "
                                  "model does not (a misspelt site name?); every guide site must be a model site")
        self._check_data_plate(model_trace, len(batch), num_data)
        self._observed = None
        # a family that takes labels per minibatch observes them on a labelled one: the data site is
        # the one observed without labels
        self.observed_name(None if self.labels == "per_minibatch" and batch.y is not None else model_trace)

    def _check_data_plate(self, model_trace, m: int, num_data: Optional[int]) -> None:
        """A local site under a plate "data" of M entries where N were given is not subsampled:
        its log-density would not be scaled by N/M."""
        if not num_data or num_data == m:
            return
        for name, site in sample_sites(model_trace):
            frame = next((f for f in site["cond_indep_stack"] if f.name == DATA_PLATE), None)
            if frame is not None and (frame.full_size or frame.size) != num_data:
                raise ConfigError(f"model ({type(self).__name__}): site {name!r} is under pyro.plate({DATA_PLATE!r}) "
                                  f"of size {frame.full_size or frame.size}, not the {num_data} training points: the "
                                  "plate is not subsampled, so a minibatch is not scaled by N/M; write "
                                  "`with self.data_plate(batch, num_data):`")

    def observed_name(self, model_trace=None) -> str:
        """The observed site :meth:`sample` and :meth:`reconstruct` return: :attr:`observed_site`
        if the family declares it, else the one observed site under the plate "data" of a trace
        of the model (:meth:`_structure_trace` if no trace is given); none or several is one line."""
        if getattr(self, "_observed", None) is not None:
            return self._observed
        if model_trace is None:
            model_trace = self._structure_trace()
        observed = [name for name, site in sample_sites(model_trace) if site["is_observed"]
                    and any(f.name == DATA_PLATE for f in site["cond_indep_stack"])]
        if self.observed_site is not None:
            if self.observed_site not in observed:
                raise ConfigError(f"model ({type(self).__name__}): observed_site = {self.observed_site!r}, but the "
                                  f"model's observed sites under the plate 'data' are {observed or 'none'}")
            self._observed = self.observed_site
        elif len(observed) == 1:
            self._observed = observed[0]
        else:
            raise ConfigError(f"model ({type(self).__name__}): "
                              + (f"{len(observed)} observed sites under the plate 'data' ({', '.join(observed)}); "
                                 "declare which one is the data with the class attribute observed_site = 'name'"
                                 if observed else "no observed site under the plate 'data': observe the data "
                                 "with pyro.sample(name, ..., obs=batch.x) inside self.data_plate(batch, num_data)"))
        return self._observed

    def _structure_trace(self):
        """A trace of the model that shows its sites (their names, plates and which are observed):
        on 2 points without data (:meth:`Batch.without_data`, labels 0 where the family reads them;
        none for one that takes labels per minibatch, whose labels are an observed site too), or, for
        a model that reads its input's values, on 2 blank points (only the sites are read)."""
        classes = getattr(self, "num_classes", None) if self.labels != "per_minibatch" else None
        y = torch.zeros(2, dtype=torch.long, device=self.device) if classes else None
        with torch.no_grad(), poutine.block(), torch.random.fork_rng(devices=[]):
            try:
                return poutine.trace(self.model).get_trace(Batch.without_data(2, self.event_shape, y, self.device),
                                                           None)
            except NeedsData:
                blank = self._blank_batch(2)
                return poutine.trace(self.model).get_trace(Batch(blank.x, y), None)

    def _blank_batch(self, m: int) -> Batch:
        """``m`` blank points of ``event_shape`` (labels 0 if the family has ``num_classes``)."""
        x = torch.zeros((m, *self.event_shape), device=self.device)
        classes = getattr(self, "num_classes", None)
        return Batch(x, torch.zeros(m, dtype=torch.long, device=x.device) if classes else None)

    def prepare(self, data) -> None:
        """Called by the loop with the training :class:`~pyrovae.Dataset` before the first step of
        a new run (M2 counts its labels here); what it sets must live in the state dict, so that a
        loaded model has it. By default nothing."""

    def scoring_batch(self, batch) -> Batch:
        """The batch that test scores (ELBO, IWAE, NLL, active units) are computed on: the batch
        itself, or (M2, and a family whose :attr:`labels` are ``"per_minibatch"``) the points without
        their labels, so that the scores bound log p(x)."""
        batch = as_batch(batch)
        return Batch(batch.x) if self.labels == "per_minibatch" else batch

    def label_site(self, batch) -> Optional[str]:
        """The site that carries the labels: observed in the model on the labelled ``batch`` and
        sampled by the guide on the same points without labels (Pyro's M2: ``"y"``); None if no
        site is (or several are)."""
        batch = as_batch(batch)
        if batch.y is None:
            return None
        labeled_model = self._prototype_traces(batch)[1]
        unlabeled_guide = self._prototype_traces(Batch(batch.x))[0]
        observed = {name for name, site in sample_sites(labeled_model) if site["is_observed"]}
        found = [name for name, site in sample_sites(unlabeled_guide)
                 if name in observed and not site["is_observed"] and site["fn"].support.is_discrete]
        return found[0] if len(found) == 1 else None

    @torch.no_grad()
    def guide_classify(self, batch, site: str) -> torch.Tensor:
        """argmax_y q(y | x) at the guide's label ``site`` on the points without labels, ``(M,)``
        (a ``Categorical``'s or a ``OneHotCategorical``'s probabilities)."""
        batch = as_batch(batch)
        guide_trace = self._prototype_traces(Batch(batch.x))[0]
        fn = guide_trace.nodes[site]["fn"]
        while not hasattr(fn, "probs") and hasattr(fn, "base_dist"):
            fn = fn.base_dist
        return fn.probs.reshape(len(batch), -1).argmax(-1)

    def check_data(self, x: torch.Tensor, where: str = "data") -> None:
        """Raise :class:`~pyrovae.DataError` for data this model cannot score (the ``vae`` family
        checks its likelihood's support); by default nothing is checked."""

    # -- what evaluation and the figures use ---------------------------------------------------
    def latent_sites(self, batch) -> Dict[str, dict]:
        """The guide's latent sites (name -> trace node) for a batch."""
        with torch.no_grad():
            guide_trace = poutine.trace(self.guide).get_trace(as_batch(batch), None)
        return latent_sites(guide_trace)

    @torch.no_grad()
    def encode(self, batch) -> torch.Tensor:
        """The posterior means E_q[z | x] of every continuous local latent site, flattened and
        concatenated: ``(M, D)`` (what active units are computed from)."""
        batch = as_batch(batch)
        m = batch.x.shape[0]
        sites = [site for site in self.latent_sites(batch).values() if not site["fn"].support.is_discrete]
        means = [_per_datapoint_values(posterior_mean(site["fn"]), site, m) for site in sites]
        means = [v for v in means if v is not None]
        return torch.cat(means, -1) if means else batch.x.new_zeros((m, 0))

    @torch.no_grad()
    def reconstruct(self, batch) -> torch.Tensor:
        """E[x | z = E_q[z | x]]: the observed site's mean with every latent site of the guide at its
        posterior mean (a discrete one at its mode)."""
        batch = as_batch(batch)
        values = {name: site["fn"].mode if site["fn"].support.is_discrete else posterior_mean(site["fn"])
                  for name, site in self.latent_sites(batch).items()}
        with poutine.trace() as tracer:
            returned = poutine.condition(self.model, data=values)(batch, None)
        return self._as_data(_mean_or_sample(tracer.trace.nodes[self.observed_name()]["fn"]), len(batch), returned)

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True, batch=None, y=None) -> torch.Tensor:
        """Draw from the model: the observed site's mean E[x | z] (``mean=True``) or a sample of
        it, z ~ p(z). Without ``batch`` the model runs on a batch without data
        (:meth:`Batch.without_data`, as Pyro's ``model(x=None)``): its prior predictive, never a
        made-up batch; a family whose model needs an input (a CVAE that conditions on part of x)
        cannot, which is :class:`NeedsInput`. ``batch``: real points the model is run on, their
        observed site drawn instead of scored (samples given those inputs). ``y``: the labels of a
        family that reads them (one int, or ``num_samples``; default the classes in turn: 0, 1,
        ..., C-1, 0, ...)."""
        classes = getattr(self, "num_classes", None)
        if y is not None and not classes:
            raise ValueError(f"y: {type(self).__name__} reads no labels (it has no num_classes)")
        name = self.observed_name()
        if batch is None:
            y = labels_for(num_samples, y, classes, self.device) if classes else None
            empty = Batch.without_data(num_samples, self.event_shape, y, self.device)
            try:
                trace, returned = drawn_trace(self.model, name, empty)
            except NeedsData as e:
                raise NeedsInput(f"model ({type(self).__name__}) cannot be sampled from its prior alone: "
                                 f"{str(e).splitlines()[0]}; give it inputs (sample(n, batch=points))") from None
        else:
            batch = as_batch(batch)[:num_samples]
            if y is not None and classes:
                batch = Batch(batch.x, labels_for(len(batch), y, classes, self.device), batch.labeled)
            trace, returned = drawn_trace(self.model, name, batch)
        site = trace.nodes[name]
        m = len(batch) if batch is not None else num_samples
        return self._as_data(_mean_or_sample(site["fn"]) if mean else site["value"], m, returned)

    def _as_data(self, values: torch.Tensor, m: int, returned=None) -> torch.Tensor:
        """The observed site's values in the data's shape ``(M, *event_shape)`` (a family may flatten
        x); where the site is not the size of the points (Pyro's CVAE observes only the pixels it
        predicts, ``loc[mask]``), what the program returned, if that is (Pyro's CVAE returns the
        whole image's ``loc``)."""
        size = m * math.prod(self.event_shape)
        if values.numel() == size:
            return values.reshape(m, *self.event_shape)
        if isinstance(returned, torch.Tensor) and returned.numel() == size:
            return returned.detach().reshape(m, *self.event_shape)
        return values

    @property
    def device(self) -> torch.device:
        param = next(self.parameters(), None)
        if param is not None:
            return param.device
        buffer = next(self.buffers(), None)
        return buffer.device if buffer is not None else torch.device("cpu")


def per_minibatch_labels(model, engine: str = "torch") -> bool:
    """Whether a family (a model or its class) takes all-labelled and all-unlabelled minibatches
    under ``train.engine`` (:meth:`Model.labels_under`: ``labels = "per_minibatch"``, or the
    built-in m2's Pyro program under the Pyro engine)."""
    under = getattr(model, "labels_under", None)
    return (under(engine) if under is not None else getattr(model, "labels", "per_point")) == "per_minibatch"


class Unobserved(UnconditionMessenger):
    """``poutine.uncondition`` of one site: the data site ``name`` is drawn rather than scored,
    and every other observed site (labels a family observes, ``obs=batch.y``) stays observed."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def _pyro_sample(self, msg) -> None:
        if msg["name"] == self.name:
            super()._pyro_sample(msg)


def drawn_trace(model, name: str, batch):
    """``(trace, returned)``: the trace of ``model`` on ``batch`` with its data site ``name`` drawn
    (:class:`Unobserved`), and what the program returned (None if it stopped early). A program
    that reads the values of a batch without data (:class:`NeedsData`) after its data site was
    drawn (Pyro's M2 adds its classifier's term on x last) is stopped there: what follows cannot
    change the draw."""
    returned = None
    with poutine.trace() as tracer:
        try:
            returned = Unobserved(name)(model)(batch, None)
        except NeedsData:
            if name not in tracer.trace.nodes:
                raise
    return tracer.trace, returned


class NeedsInput(ValueError):
    """A family's model cannot be run without data (it reads its input's values: a CVAE that
    conditions on part of x, a topic model that takes its document lengths from x): it is sampled
    given real points instead (:meth:`Model.sample` with ``batch``)."""


def _particle(values: Optional[Dict[str, torch.Tensor]], i: int) -> Optional[Dict[str, torch.Tensor]]:
    """Particle ``i``'s fixed guide values, from values with the particles on the left."""
    return None if not values else {name: value[i] for name, value in values.items()}


def _with_batch(fn):
    @functools.wraps(fn)
    def program(self, batch, *args, **kwargs):
        return fn(self, as_batch(batch), *args, **kwargs)
    return program


@torch.no_grad()
def draws_read_labels(model: Model, num_classes: int, batch: Optional[Batch] = None) -> bool:
    """Whether a family's draws depend on the labels it is given (a family that reads ``batch.y``
    without a ``num_classes`` of its own): its observed site's mean for labels 0 and for labels 1,
    from the same random draws, on a batch without data (or on the points of ``batch``, for a
    model that needs inputs: :class:`NeedsData` otherwise)."""
    if num_classes < 2:
        return False
    name, drawn = model.observed_name(), []
    for label in (0, 1):
        y = torch.full((2,), label, dtype=torch.long, device=model.device)
        given = Batch.without_data(2, model.event_shape, y, model.device) if batch is None \
            else Batch(as_batch(batch).x[:2], y[:len(as_batch(batch))])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            drawn.append(_mean_or_sample(drawn_trace(model.model, name, given)[0].nodes[name]["fn"]))
    return not torch.equal(drawn[0], drawn[1])


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


