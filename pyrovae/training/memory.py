"""How much memory a configuration needs, estimated before anything is allocated.

A size that cannot be allocated (huge hidden layers, ``num_particles``, ``eval_particles``) is
refused before the run folder exists, with one line that names the key, instead of failing
in the first step or at the end of the first epoch. The estimate:

- the model is built on PyTorch's ``meta`` device (shapes, no storage), which gives the
  parameter count P exactly;
- training keeps P numbers four times over at least (parameters, gradients, the copy the
  loop keeps for a rollback, and its optimizer state, k slots per parameter, twice);
- the model's terms for a single datapoint run on ``meta`` tensors, with 1 and with 2
  particles, under a dispatch mode that adds up the size of every tensor an operation creates
  (views excluded): A_dec numbers per particle (the difference; the decoder and likelihood of
  the ``vae`` family) and A_enc per datapoint besides (the encoder). A training step holds
  3 (A_enc M + A_dec L M) numbers (forward, saved for backward, gradients) for a minibatch of
  M points with L particles; the test ELBO, in chunks of 1000 points with ``eval_particles``
  particles and no gradients, 1.5 (A_enc + A_dec L_eval) 1000.

These are overestimates of the peak by design: refusing a configuration that would fit
only just is better than losing a run to an allocation failure.
"""

import contextlib
import warnings
from typing import Optional

import pyro
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pyrovae.data.batch import Batch
from pyrovae.devices import available_bytes, format_bytes
from pyrovae.errors import ConfigError, shown

EVAL_CHUNK = 1000  # the test ELBO's points per chunk (evaluate.dataset_terms)
OPTIMIZER_SLOTS = {"adam": 2, "clipped_adam": 2, "adagrad": 1, "rmsprop": 1}


class _CountCreated(TorchDispatchMode):
    """Adds up the elements (``numel``) and the number (``tensors``) of every tensor an operation
    creates (views share storage: not counted; with ``skip_inputs``, neither are the inputs that
    in-place operations return)."""

    def __init__(self, skip_inputs: bool = False):
        super().__init__()
        self.skip_inputs = skip_inputs
        self.numel = self.tensors = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            inputs = {id(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)} \
                if self.skip_inputs else ()
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and id(t) not in inputs:
                    self.numel += t.numel()
                    self.tensors += 1
            self.created()
        return out

    def created(self) -> None:
        """Called after each operation that created tensors."""


def _forward_numels(model) -> Optional[tuple]:
    """(A_enc, A_dec): numbers created per datapoint by the parts that run once per point and by
    those that run once per particle. From the model's terms for 1 and 2 particles on meta
    tensors: A_dec is the difference, A_enc the rest. A family that reads labels is run with a
    label (its one-hot inputs counted too). A model with parameters (a trained one, for
    ``evaluate``) runs on one point where they are; one built on the meta device, on meta tensors."""
    device = getattr(model, "device", torch.device("meta"))
    x = torch.zeros((1, *model.event_shape), device=device)
    batches = [Batch(x)]
    if getattr(model, "num_classes", None):
        batches.insert(0, Batch(x, torch.zeros(1, dtype=torch.long, device=device)))
    for batch in batches:
        try:
            counts = []
            with torch.no_grad(), pyro.validation_enabled(False):
                for particles in (1, 2):
                    with _CountCreated() as count:
                        model.terms(batch, particles, kl=False)
                    counts.append(count.numel)
            per_particle = max(counts[1] - counts[0], 0)
            return max(counts[0] - per_particle, 0), per_particle
        except Exception:  # a model that cannot run on meta tensors (this way): no activation estimate
            continue
    return None


#: building a model on the meta device that creates more tensors than this is refused: a model has
#: hundreds (a deep flow a few thousand); 10^9 flow steps would take hours to build, and are refused in seconds
MAX_BUILD_TENSORS = 20_000


class _TooLarge(Exception):
    pass


class _BuildBudget(_CountCreated):
    """Counts the elements and tensors created while a model is built (in-place initialisation
    not counted twice), and stops the build (:class:`_TooLarge`) the moment either passes its
    budget: a huge layer or flow count is refused at the first tensor past what memory could
    hold, never built."""

    def __init__(self, max_numel: int, max_tensors: int = MAX_BUILD_TENSORS):
        super().__init__(skip_inputs=True)
        self.max_numel, self.max_tensors = max_numel, max_tensors

    def created(self) -> None:
        if self.numel > self.max_numel or self.tensors > self.max_tensors:
            raise _TooLarge()


def largest_size(options, prefix: str = "model") -> Optional[tuple]:
    """(key, value) of the largest integer in a nest of config options (``model.prior.num_flows``, 10**9)."""
    best = None
    items = options.items() if isinstance(options, dict) else enumerate(options) if isinstance(options, list) else ()
    for key, value in items:
        where = f"{prefix}.{key}" if isinstance(options, dict) else f"{prefix}[{key}]"
        found = (where, value) if isinstance(value, int) and not isinstance(value, bool) else \
            largest_size(value, where) if isinstance(value, (dict, list)) else None
        if found and (best is None or found[1] > best[1]):
            best = found
    return best


@contextlib.contextmanager
def build_budget(device="cpu", options=None, num_classes: Optional[int] = None):
    """Build a model inside this block within the memory ``device`` has: a build that creates more
    numbers than that, or more than :data:`MAX_BUILD_TENSORS` tensors, stops at that tensor, in
    one ConfigError line naming the largest size in ``options`` (the ``[model]`` table) and, for
    a family that reads labels, the number of classes. For meta and real builds alike (a part that
    cannot be built on meta, such as Pyro's autoregressive flows, is still stopped in time)."""
    budget = _BuildBudget(max(available_bytes(device) // 4, 1))
    try:
        with budget:
            yield
    except _TooLarge:
        largest = largest_size(options or {})
        what = f"its largest size: {largest[0]} = {shown(largest[1])}" if largest else ""
        classes = f"{'; ' if what else ''}{num_classes} classes from the data's labels" if num_classes else ""
        reason = (f"more than {budget.max_tensors} tensors" if budget.tensors > budget.max_tensors else
                  f"more numbers than the {format_bytes(budget.max_numel * 4)} available on "
                  f"{torch.device(device).type} can hold")
        detail = f" ({what}{classes})" if what or classes else ""
        raise ConfigError(f"model: building it would make {reason}{detail}; lower the sizes in [model]") from None


def meta_model(build, device="cpu", options=None, num_classes: Optional[int] = None):
    """``build()`` on the meta device (shapes only), within :func:`build_budget`; None if the model
    cannot be built there."""
    try:
        with build_budget(device, options, num_classes), torch.device("meta"), warnings.catch_warnings():
            # a constructor that loads pretrained weights copies them into meta parameters: a no-op here (the
            # real build loads them), which torch warns about once per tensor
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
            return build()
    except ConfigError:
        raise
    except Exception:
        return None


def _largest_part(model) -> str:
    """The config key of the submodule with the most parameters (``model.decoder``, ...)."""
    sizes = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    return f"model.{max(sizes, key=sizes.get)}" if sizes else "model"


def check_training_memory(vae, batch_size: int, num_particles: int, eval_particles: int, optim_name: str,
                          device, available: Optional[int] = None) -> int:
    """Refuse (one ConfigError line naming the key) a configuration whose estimated peak
    memory exceeds what ``device`` has available; returns the estimate in bytes.

    ``vae`` is best built on the meta device (:func:`meta_model`): nothing is allocated.
    """
    params = sum(p.numel() for p in vae.parameters())
    slots = OPTIMIZER_SLOTS.get(optim_name, 2)
    parts = {_largest_part(vae): params * (4 + 2 * slots)}
    numels = _forward_numels(vae)
    if numels is not None:
        a_enc, a_dec = numels
        step_particles = 3 * a_dec * batch_size * num_particles
        step_batch = 3 * a_enc * batch_size
        key = "train.num_particles" if num_particles > 1 and step_particles > step_batch else "train.batch_size"
        parts[key] = step_batch + step_particles
        parts["train.eval_particles"] = int(1.5 * (a_enc + a_dec * eval_particles) * EVAL_CHUNK)
    need = 4 * sum(parts.values())  # float32
    available = available_bytes(device) if available is None else available
    if need > available:
        key = max(parts, key=parts.get)
        values = {"train.num_particles": num_particles, "train.batch_size": batch_size,
                  "train.eval_particles": eval_particles}
        what = f"{key} = {shown(values[key])}" if key in values else key
        raise ConfigError(f"{what}: this configuration needs about {format_bytes(need)} "
                          f"({', '.join(f'{k} {format_bytes(4 * v)}' for k, v in parts.items())}), more than the "
                          f"{format_bytes(available)} available on {torch.device(device).type}")
    return need


def check_evaluation_memory(vae, elbo_particles: int, device, available: Optional[int] = None) -> None:
    """Refuse ``--particles`` values whose test-ELBO chunk cannot be allocated (one line)."""
    numels = _forward_numels(vae)
    if numels is None:
        return
    need = 4 * 1.5 * (numels[0] + numels[1] * elbo_particles) * EVAL_CHUNK
    available = available_bytes(device) if available is None else available
    if need > available:
        raise ConfigError(f"--particles {shown(elbo_particles)}: the test ELBO needs about {format_bytes(need)}, "
                          f"more than the {format_bytes(available)} available")


