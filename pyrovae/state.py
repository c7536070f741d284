"""A training run's state as plain containers: every RNG state, and checked loading of a model's parameters.

A checkpoint holds only tensors and plain containers (see :mod:`pyrovae.checkpoint`), so the
RNG states are stored that way: torch's and CUDA's as byte tensors, NumPy's and Python's
Mersenne twisters as int64 tensors with their counters.
"""

import random
from typing import Any, Dict

import numpy as np
import torch

from .errors import RunDirError, shown


def plain_numpy_state(numpy_state: tuple) -> Dict[str, Any]:
    """``np.random.get_state()`` as a dict of a tensor and numbers."""
    name, keys, pos, has_gauss, cached = numpy_state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def plain_python_state(python_state: tuple) -> Dict[str, Any]:
    """``random.getstate()`` as a dict of a tensor and numbers."""
    version, mt, gauss_next = python_state
    return {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss_next}


def rng_state() -> Dict[str, Any]:
    """Every global RNG state, as tensors and plain values (loadable with ``weights_only=True``)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": plain_numpy_state(np.random.get_state()), "python": plain_python_state(random.getstate())}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_state(module: torch.nn.Module, saved: Dict[str, torch.Tensor], where) -> None:
    """``module.load_state_dict(saved)``; missing or unexpected keys and other shapes are one line."""
    mine = module.state_dict()
    missing = [k for k in mine if k not in saved]
    unexpected = [k for k in saved if k not in mine]
    if missing or unexpected:
        names = ", ".join(shown(k, 40) for k in (missing or unexpected)[:3])
        raise RunDirError(f"{where}: the checkpoint's model {'lacks' if missing else 'has unknown'} parameters "
                          f"({names}{', ...' if len(missing or unexpected) > 3 else ''}); "
                          "it does not match its config (a model built in Python loads with "
                          "pyrovae.load(run, model=...))")
    for k, t in mine.items():
        if tuple(saved[k].shape) != tuple(t.shape):
            raise RunDirError(f"{where}: the checkpoint's {shown(k, 60)} has shape {tuple(saved[k].shape)}, "
                              f"the config's model needs {tuple(t.shape)}")
        if saved[k].dtype != t.dtype:
            raise RunDirError(f"{where}: the checkpoint's {shown(k, 60)} is {saved[k].dtype}, the config's model "
                              f"holds {t.dtype}")
        if saved[k].is_floating_point() and not bool(torch.isfinite(saved[k]).all()):
            raise RunDirError(f"{where}: the checkpoint's {shown(k, 60)} holds non-finite values (NaN or infinite); "
                              "a model with them gives no meaningful numbers")
    module.load_state_dict(saved)


