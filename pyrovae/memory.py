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

import os
from pathlib import Path
from typing import Optional

import pyro
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .data import Batch
from .errors import ConfigError, shown

EVAL_CHUNK = 1000  # the test ELBO's points per chunk (evaluate.dataset_terms)
OPTIMIZER_SLOTS = {"adam": 2, "clipped_adam": 2, "adagrad": 1, "rmsprop": 1}


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def available_bytes(device="cpu") -> int:
    """Memory free for new tensors on ``device``: the GPU's free memory, or on the CPU the
    smaller of the system's available memory and what the process's cgroup still allows."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            candidates.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return 1 << 62  # unknown: no refusal
    return max(0, min(candidates))


class _CountCreated(TorchDispatchMode):
    """Adds up the elements of every tensor an operation creates (views share storage: not counted)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.numel += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def _forward_numels(model) -> Optional[tuple]:
    """(A_enc, A_dec): numbers created per datapoint by the parts that run once per point and by
    those that run once per particle. From the model's terms for 1 and 2 particles on meta
    tensors: A_dec is the difference, A_enc the rest."""
    try:
        counts = []
        with torch.no_grad(), pyro.validation_enabled(False):
            batch = Batch(torch.zeros((1, *model.event_shape), device="meta"))
            for particles in (1, 2):
                with _CountCreated() as count:
                    model.terms(batch, particles, kl=False)
                counts.append(count.numel)
        per_particle = max(counts[1] - counts[0], 0)
        return max(counts[0] - per_particle, 0), per_particle
    except Exception:  # a model that cannot run on meta tensors: no activation estimate
        return None


def meta_model(build):
    """``build()`` on the meta device (shapes only); None if the model cannot be built there."""
    try:
        with torch.device("meta"):
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

