"""Optimizers by name: ``adagrad`` (the paper's), ``rmsprop``, ``adam``, ``clipped_adam``.

Each is one ``torch.optim.Optimizer`` over all of the VAE's parameters. ``weight_decay``
adds ``weight_decay * theta`` to the gradient of the per-datapoint loss that pyrovae
minimises (see :func:`pyrovae.fit`): ``weight_decay = 1 / N`` is exactly the paper's
N(0, I) prior on the parameters (Kingma & Welling 2014, Sec. 5).

``implementation`` picks torch's kernel for the update (Adam, AdaGrad, RMSProp): ``auto``
(the default) uses the fused kernel, one pass over all parameters for the whole update, when
torch has one for the parameters' device and dtype (Adam and AdaGrad on CPU and CUDA), else
torch's default; ``fused``, ``foreach`` (one call per operation over the list of parameters)
and ``for_loop`` (one tensor at a time: the default of ``torch.optim`` on the CPU) force one.
The update rule is the same in every case; results differ only by floating-point rounding.
On the standard MNIST VAE the fused Adam kernel makes a CPU training step 4-7 % faster than
torch's default (``benchmarks/throughput.py``).
"""

from typing import Any, Dict, List

import torch
from pyro.optim.clipped_adam import ClippedAdam

from pyrovae.errors import ConfigError, shown
from pyrovae.registry import Registry, Spec

OPTIMIZERS = Registry("optimizer", context=("params",))
"""Optimizers by name (``optim.name``): ``adam``, ``adagrad`` (the paper's), ``rmsprop``,
``clipped_adam``, each built with the parameters and the ``[optim]`` table's options.
"""
IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")
FUSED_DEVICES = ("cpu", "cuda")  # where torch has fused Adam and AdaGrad kernels


def _implementation(params, choice: str, fused: bool = True) -> dict:
    """torch.optim keyword arguments (``fused`` / ``foreach``) for an ``implementation`` choice."""
    allowed = IMPLEMENTATIONS if fused else tuple(c for c in IMPLEMENTATIONS if c != "fused")
    if choice not in allowed:
        raise ValueError(f"implementation must be one of {', '.join(allowed)}; got {shown(choice)}")
    fusable = fused and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    if choice == "fused" and not fusable:
        kinds = sorted({f"{p.dtype} on {p.device.type}" for p in params})
        raise ValueError(f"implementation 'fused' needs floating-point parameters on {' or '.join(FUSED_DEVICES)}; "
                         f"got {', '.join(kinds)}")
    if choice == "auto":
        return {"fused": True} if fusable else {}
    return {"fused": True} if choice == "fused" else {"foreach": choice == "foreach"}


@OPTIMIZERS.register("adam")
def adam(params, lr: float = 1e-3, betas: List[float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, amsgrad: bool = False, implementation: str = "auto"):
    """Adam (Kingma & Ba 2015)."""
    return torch.optim.Adam(params, lr=lr, betas=_betas(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                            **_implementation(params, implementation))


@OPTIMIZERS.register("adagrad")
def adagrad(params, lr: float = 0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
            initial_accumulator_value: float = 0.0, eps: float = 1e-10, implementation: str = "auto"):
    """AdaGrad (Duchi et al. 2011), the paper's choice with global step size in {0.01, 0.02, 0.1}."""
    if lr_decay < 0:
        raise ValueError(f"lr_decay must be >= 0, got {lr_decay}")
    return torch.optim.Adagrad(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                               initial_accumulator_value=initial_accumulator_value, eps=eps,
                               **_implementation(params, implementation))


@OPTIMIZERS.register("rmsprop")
def rmsprop(params, lr: float = 1e-3, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
            momentum: float = 0.0, centered: bool = False, implementation: str = "auto"):
    """RMSProp (Tieleman & Hinton 2012)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                               momentum=momentum, centered=centered,
                               **_implementation(params, implementation, fused=False))


@OPTIMIZERS.register("clipped_adam")
def clipped_adam(params, lr: float = 1e-3, betas: List[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, clip_norm: float = 10.0, lrd: float = 1.0):
    """Pyro's ClippedAdam: Adam with each gradient element clipped to [-clip_norm, clip_norm]
    and the step size multiplied by ``lrd`` after every step."""
    if clip_norm <= 0:
        raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
    if not 0 < lrd <= 1:
        raise ValueError(f"lrd must be in (0, 1], got {lrd}")
    return ClippedAdam(params, lr=lr, betas=_betas(betas), eps=eps, weight_decay=weight_decay,
                       clip_norm=clip_norm, lrd=lrd)


def _betas(betas):
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {list(betas)}")
    return tuple(float(b) for b in betas)


def load_state(optimizer: torch.optim.Optimizer, saved: Dict[str, Any]) -> None:
    """Load a saved optimizer state, keeping this optimizer's kernel choice (``fused``,
    ``foreach``): a run resumed on another device, or from an older checkpoint, uses the kernels
    its own optimizer picked (torch places each state tensor by the choice it finds in the groups)."""
    flags = ("fused", "foreach", "capturable")
    groups = [{**g, **{k: now[k] for k in flags if k in now}}
              for g, now in zip(saved["param_groups"], optimizer.param_groups)]
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for index, slots in saved.get("state", {}).items():  # torch checks the groups' sizes, not the slots' shapes
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(slots, dict):
            raise ValueError(f"optimizer state for parameter {index!r} of {len(params)}")
        for name, value in slots.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                raise ValueError(f"optimizer slot {name!r} of parameter {index} has shape {tuple(value.shape)}, "
                                 f"the parameter {tuple(params[index].shape)}")
            if isinstance(value, torch.Tensor) and (not value.is_floating_point()
                                                    or not bool(torch.isfinite(value).all())):
                raise ValueError(f"optimizer slot {name!r} of parameter {index} is not finite floating point")
    optimizer.load_state_dict({**saved, "param_groups": groups})


#: the optimizer a run takes where ``[optim]`` names none (``optim.name`` left out: the same name)
DEFAULT_OPTIMIZER = {"name": "adam", "lr": 1e-3}


def default_optimizer() -> Dict[str, Any]:
    """A fresh copy of :data:`DEFAULT_OPTIMIZER` (Adam at 1e-3)."""
    return dict(DEFAULT_OPTIMIZER)


def build_optimizer(spec: Spec, params) -> torch.optim.Optimizer:
    """A torch optimizer from a spec such as ``{"name": "adagrad", "lr": 0.02}`` (its ``schedule``,
    if any, is :func:`pyrovae.training.schedules.build_schedule`'s)."""
    if isinstance(spec, dict):
        spec = {k: v for k, v in spec.items() if k != "schedule"}
    name, options = OPTIMIZERS.split(spec, "optim")
    if options.get("lr", 1.0) <= 0:
        raise ConfigError(f"optim.lr = {shown(options['lr'])}: must be > 0")
    return OPTIMIZERS.build(spec, "optim", params=list(params))


def check_optimizer(spec: Spec, epochs: int = 1, has_validation: bool = True) -> None:
    """Validate a spec (names, types and ranges), and its schedule, by building them over a dummy parameter."""
    from pyrovae.training.schedules import build_schedule, schedule_spec

    optimizer = build_optimizer(spec, [torch.zeros(1, requires_grad=True)])
    build_schedule(schedule_spec(spec), optimizer, epochs, 1, has_validation)
