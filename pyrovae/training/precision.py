"""``train.precision``: the training step in float32, or in mixed precision (Micikevicius et al.
2018, "Mixed Precision Training"; Lightning's ``precision`` names).

- ``"32"`` (default): everything in float32.
- ``"bf16-mixed"``: the step's forward pass under ``torch.autocast`` to bfloat16 (CPU and CUDA):
  matrix products and convolutions run in bfloat16, with float32 weights and optimizer state.
- ``"16-mixed"`` (CUDA): the same in float16, with a gradient scaler (``torch.amp.GradScaler``):
  the loss is multiplied by a scale before ``backward`` so small gradients do not underflow
  float16, the gradients are unscaled before the step, and a step whose gradients overflowed is
  skipped while the scale shrinks.

**What stays in float32.** The networks' outputs are cast back to float32 where they leave a
network (a forward hook on each of the model's networks, :func:`float32_outputs`), so the
distributions' parameters, the log-densities log p(x|z), log p(z) and log q(z|x), the closed-form
KL and the ELBO are all computed in float32, as are the reported numbers: evaluation never runs
under autocast. Only the work inside the networks is in the lower precision.
"""

import contextlib
from typing import Optional

import torch

#: the settings of train.precision
PRECISIONS = ("32", "bf16-mixed", "16-mixed")


def precision_problem(precision: str, device: str) -> Optional[str]:
    """Why ``precision`` cannot run on ``device`` (a string like "cpu" or "cuda:0"), or None."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        return f"valid: {', '.join(PRECISIONS)}"
    if precision == "16-mixed" and not str(device).startswith("cuda"):
        return ("float16 autocast with a gradient scaler needs a CUDA device (train.device = 'cuda'); "
                "on the CPU use 'bf16-mixed'")
    return None


class MixedPrecision:
    """The training step's precision: :meth:`autocast` around the forward pass, :meth:`backward`
    and :meth:`step` in place of ``loss.backward()`` and ``optimizer.step()``. With ``"32"`` they
    are exactly those calls."""

    def __init__(self, precision: str, device: torch.device):
        self.precision, self.device = precision, torch.device(device)
        self.dtype = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[precision]
        #: the gradient scaler (16-mixed), else None
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "16-mixed" else None

    def autocast(self):
        """The forward pass's context: autocast to the lower precision, or nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer) -> None:
        """The gradients in their true units (16-mixed: divided by the scale), before they are checked."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    @property
    def skips_overflow(self) -> bool:
        """Whether a non-finite gradient is the scaler's to handle (a skipped step, a smaller scale)
        rather than an error: a float16 overflow under a scale that is still too large."""
        return self.scaler is not None

    def step(self, optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self):
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def _as_float32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value
    if isinstance(value, tuple):
        return type(value)(*map(_as_float32, value)) if hasattr(value, "_fields") else tuple(map(_as_float32, value))
    if isinstance(value, list):
        return [_as_float32(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_float32(v) for k, v in value.items()}
    return value


def networks(model: torch.nn.Module):
    """The model's networks: its submodules one level down (through ``ModuleList`` and
    ``ModuleDict``, which are never called themselves)."""
    for child in model.children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            yield from networks(child)
        else:
            yield child


@contextlib.contextmanager
def float32_outputs(model: torch.nn.Module, enabled: bool = True):
    """While the block runs, each of the model's networks (:func:`networks`: the encoder, the
    decoder, a prior's or a likelihood's own) returns its floating tensors in float32: what autocast
    computed in a lower precision inside a network leaves it in float32 (tensors in tuples, lists
    and dicts too), and the layers inside a network stay in the lower precision. The hooks are
    removed after the block."""
    if not enabled:
        yield
        return
    handles = [module.register_forward_hook(lambda module, args, output: _as_float32(output))
               for module in networks(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
