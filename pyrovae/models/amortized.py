"""``AmortizedGuide``: an amortized variational posterior built automatically from a Pyro model.

Pyro's autoguides (``AutoNormal``, ...) give every latent variable its own parameters, so a
local latent z_i, one per datapoint, gets N sets of them and no encoder; Pyro's amortized
AutoNormal (pyro-ppl issue #2849) has been open since 2021. ``AmortizedGuide(model)`` traces
the model once, on the first batch it sees, and builds what a VAE's author writes by hand:

- every latent site inside the plate "data" (a local latent, one value per datapoint) gets a
  diagonal Normal in its unconstrained space,

      q(z_i | x_i) = T_# N(mu_s(x_i), diag sigma_s^2(x_i)),   T = biject_to(support of z),

  whose means and log-variances for all local sites come from one encoder network (any
  registered encoder spec, as ``model.encoder``) reading the datapoint's observed values x_i
  (and, if ``num_classes`` is given, its one-hot label y_i, zeros where the point has none);
- every latent site outside the plate (a global latent) gets a mean-field Normal with free
  parameters in its unconstrained space, as ``AutoNormal`` would;
- a discrete site marked for enumeration (``infer={"enumerate": "parallel"}``) is left to the
  model: ``TraceEnum_ELBO`` sums it out.

For real-valued sites T is the identity and q is a plain Normal, so the KL from a Gaussian
prior has a closed form (estimator B); for constrained sites (positive, simplex, ...) q is a
transformed Normal, with log-densities through the Jacobian of T.

The model is ``model(x_or_batch, num_data=None)``: a tensor of datapoints, or a
:class:`~pyrovae.Batch`, first; its local sites under ``pyro.plate("data", ...)`` (e.g.
:func:`pyrovae.data_plate`). The guide takes the same arguments, so it serves plain
``pyro.infer.SVI``; a :class:`~pyrovae.Model` subclass that defines no ``guide`` gets one
(:attr:`Model.guide_encoder` sets its network), and trains and evaluates with everything else.
"""

import contextlib
import math
from typing import Callable, Dict, List, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn
from torch.distributions import biject_to, constraints

from pyrovae.data.batch import Batch
from pyrovae.models.terms import DATA_PLATE, enumerated, sample_sites
from pyrovae.parts.nets import ENCODERS
from pyrovae.registry import Spec


def _observed_input(args, num_classes: Optional[int]) -> torch.Tensor:
    """What the encoder reads of a batch: x flattened, with y one-hot appended where the guide
    reads labels (``num_classes``): zeros for a point without a usable label (no ``y``, or
    ``labeled`` False), so that an unlabelled point's label never reaches the posterior."""
    batch = args[0] if isinstance(args[0], Batch) else Batch(args[0])
    x = batch.x.reshape(batch.x.shape[0], -1)
    if num_classes:
        if batch.y is None:
            c = x.new_zeros((x.shape[0], num_classes))
        else:
            c = torch.nn.functional.one_hot(batch.y.long(), num_classes).to(x.dtype)
            if batch.labeled is not None:
                c = c * batch.labeled.to(x.dtype).unsqueeze(-1)
        x = torch.cat([x, c], -1)
    return x


class _Site:
    """What the guide knows of one latent site, from the prototype trace."""

    def __init__(self, name: str, site, data_frame):
        self.key = name.replace(".", "_")  # its name in the global parameters' ParameterDicts
        self.support = site["fn"].support
        self.transform = biject_to(self.support)
        self.event_dim = self.transform.domain.event_dim  # event dims in the unconstrained space
        unconstrained = self.transform.inv(site["value"].detach())
        self.shape = tuple(unconstrained.shape)
        self.plates = [f for f in site["cond_indep_stack"] if f.vectorized and f.name != DATA_PLATE]
        self.local = data_frame is not None
        if self.local:  # where the datapoints lie in the unconstrained value, and each one's size
            self.plate_dim = data_frame.dim  # counted from the right of the batch dims, as plates count
            self.data_dim = len(self.shape) - self.event_dim + data_frame.dim
            self.per_point = math.prod(self.shape) // self.shape[self.data_dim]
        support = self.support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        self.identity = support is constraints.real  # then T is the identity and q a plain Normal

    def distribution(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.TorchDistribution:
        base = dist.Normal(loc, scale).to_event(self.event_dim)
        if self.identity:
            return base
        return dist.TransformedDistribution(base, [self.transform])


class AmortizedGuide(PyroModule):
    """An amortized guide for any Pyro model (see the module docstring).

    :param callable model: ``model(x_or_batch, num_data=None)`` with local latents under the plate "data".
    :param encoder: a registered encoder spec (``"mlp"``, ``{"name": "mlp", "hidden": [400]}``):
        the network from a datapoint's observed values to the means and log-variances of all
        its local latent sites.
    :param int num_classes: if given, a batch's labels y are read too (one-hot).
    :param float init_scale: the initial standard deviation of the global sites' Normals.
    :param batch: an example batch to build the guide now (else on the first call): the
        parameters then exist before an optimizer is made from them.
    :param str name: the Pyro name prefix of the parameters.
    """

    def __init__(self, model: Callable, encoder: Spec = "mlp", num_classes: Optional[int] = None,
                 init_scale: float = 0.1, batch=None, name: str = "guide"):
        super().__init__(name)
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        self._model = [model]  # a list: the model may be this guide's parent module (no cycle of modules)
        self.encoder_spec, self.num_classes, self.init_scale = encoder, num_classes, float(init_scale)
        self.encoder: Optional[nn.Module] = None
        self.global_loc = nn.ParameterDict()
        self.global_log_scale = nn.ParameterDict()
        self.sites: Dict[str, _Site] = {}
        self.enumerated: List[str] = []
        self.is_set_up = False
        if batch is not None:
            self.setup(batch)

    def setup(self, *args, **kwargs) -> None:
        """Trace the model once on ``args`` and build the encoder and the global parameters."""
        model = self._model[0]
        with torch.no_grad(), poutine.block(), pyro.validation_enabled(False), torch.random.fork_rng(devices=[]):
            trace = poutine.trace(model).get_trace(*args, **kwargs)
        local_size = 0
        for name, site in sample_sites(trace):
            if site["is_observed"]:
                continue
            if enumerated(site):
                self.enumerated.append(name)
                continue
            if site["fn"].support.is_discrete:
                raise ValueError(f"AmortizedGuide: site {name!r} is discrete; mark it for enumeration "
                                 "(infer={'enumerate': 'parallel'}) so that TraceEnum_ELBO sums it out")
            frames = [f for f in site["cond_indep_stack"] if f.vectorized]
            data = next((f for f in frames if f.name == DATA_PLATE), None)
            s = _Site(name, site, data)
            self.sites[name] = s
            if s.local:
                s.offset = local_size
                local_size += s.per_point
            else:
                self.global_loc[s.key] = nn.Parameter(torch.zeros(s.shape))
                self.global_log_scale[s.key] = nn.Parameter(torch.full(s.shape, math.log(self.init_scale)))
        observed = _observed_input(args, self.num_classes)
        if local_size:
            self.encoder = ENCODERS.build(self.encoder_spec, "guide encoder", event_shape=(observed.shape[-1],),
                                          latent_dim=local_size)
        self.to(observed.device)
        self.is_set_up = True

    def forward(self, *args, **kwargs):
        """Sample every latent site of the model (bar enumerated ones) from q; same arguments as the model."""
        if not self.is_set_up:
            self.setup(*args, **kwargs)
        num_data = kwargs.get("num_data", args[1] if len(args) > 1 else None)
        values, plates = {}, {}  # each plate made once (a plate is a site of its own), entered per site

        def plate(name, size, dim, **kwargs):
            if name not in plates:
                plates[name] = pyro.plate(name, size, dim=dim, **kwargs)
            return plates[name]

        if self.encoder is not None:
            x = _observed_input(args, self.num_classes)
            loc, log_var = self.encoder(x)
        for name, s in self.sites.items():
            entered = [plate(f.name, f.size, f.dim) for f in s.plates]
            if s.local:
                m = x.shape[0]
                piece = slice(s.offset, s.offset + s.per_point)
                shape = (m, *s.shape[:s.data_dim], *s.shape[s.data_dim + 1:])
                site_loc = loc[:, piece].reshape(shape).movedim(0, s.data_dim)
                site_scale = torch.exp(0.5 * log_var[:, piece]).reshape(shape).movedim(0, s.data_dim)
                entered.append(plate(DATA_PLATE, num_data or m, s.plate_dim,
                                     subsample=torch.arange(m, device=x.device)))
            else:
                site_loc, site_scale = self.global_loc[s.key], self.global_log_scale[s.key].exp()
            with contextlib.ExitStack() as stack:
                for p in entered:
                    stack.enter_context(p)
                values[name] = pyro.sample(name, s.distribution(site_loc, site_scale))
        return values

    def medians(self, *args, **kwargs) -> Dict[str, torch.Tensor]:
        """Each latent site's posterior median T(mu) (its mean, for a real-valued site)."""
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(self).get_trace(*args, **kwargs)
        out = {}
        for name, s in self.sites.items():
            fn = trace.nodes[name]["fn"]
            base = fn.base_dist if isinstance(fn, dist.TransformedDistribution) else fn
            out[name] = base.mean if s.identity else s.transform(base.mean)
        return out
