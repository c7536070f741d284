"""Random number state: draws from a seeded generator that leave the caller's alone (:func:`seeded`),
and every RNG state as plain containers.

A checkpoint holds only tensors and plain containers (see :mod:`pyrovae.app.checkpoint`), so the
RNG states are stored that way: torch's and CUDA's as byte tensors, NumPy's and Python's
Mersenne twisters as int64 tensors with their counters.
"""

import contextlib
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

#: seeds are in [0, SEED_LIMIT): NumPy's, which pyro.set_rng_seed sets with torch's and Python's
SEED_LIMIT = 2**32


def seed_problem(seed) -> str:
    """Why ``seed`` cannot seed every generator (``""`` if it can)."""
    return "" if 0 <= seed < SEED_LIMIT else "must be in [0, 2^32)"


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


@contextlib.contextmanager
def seeded(x, seed: Optional[int]):
    """Draw from a generator seeded with ``seed``, leaving the caller's state untouched (None: the
    caller's); ``x`` (a device, or a tensor, a Batch or a Split: anything with a ``device``) says on which one."""
    if seed is None:
        yield
        return
    device = x if isinstance(x, torch.device) else torch.device(x.device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
