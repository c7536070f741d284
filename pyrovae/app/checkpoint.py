"""Checkpoints: tensors and plain containers only, read without running code; ``pyrovae.load``.

``checkpoint.pt`` is a ``torch.save`` of a dict that holds nothing but tensors, numbers,
strings, ``None``, lists and dicts:

- ``model``, ``optimizer``: the state dicts;
- ``rng``: every RNG state (torch, CUDA, the loop's noise generator as byte tensors; NumPy's
  and Python's Mersenne twisters as int64 tensors with their counters);
- ``counters``: epoch, step, samples seen, rollbacks, and the position and sums of a
  half-done epoch;
- ``metrics``: the records of every completed epoch (``metrics.jsonl`` is rebuilt from them
  on ``--resume``, so the two never disagree);
- ``data``: the data's fingerprint (shapes and SHA-256 of the values of both splits);
- ``event_shape`` and ``config``: what :func:`pyrovae.app.opening.load` needs to rebuild the model.

Every read goes through :func:`read_checkpoint`, which calls ``torch.load(...,
weights_only=True)``: PyTorch's restricted unpickler, which builds tensors and plain containers
and refuses every other Python object, so a file carrying a pickle payload cannot run code.
A file that needs more is refused in one line; an older pyrovae checkpoint (format 1, which
stored NumPy's RNG state as an array) from a source you trust is converted by
``pyrovae convert-checkpoint RUN_DIR --trust`` (:func:`pyrovae.app.convert.convert_checkpoint`).
"""

import io
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from pyrovae.app.config import Config
from pyrovae.app.files import (
    atomic_write_bytes,
)
from pyrovae.app.fingerprint import FINGERPRINT_KEYS, standardization_record_ok
from pyrovae.data.sampling import steps_per_epoch
from pyrovae.errors import RunDirError, as_typed, needed_object, one_line, shown
from pyrovae.models.base import per_minibatch_labels
from pyrovae.models.registry import MODELS
from pyrovae.safe_load import UnsafeFile, load_torch_file
from pyrovae.training.records import TRAINING_STATE_KEYS, Counters, EpochRecord, TrainingState
from pyrovae.training.train_config import resolved_labeled_weight

FORMAT = "pyrovae-checkpoint-2"
OLD_FORMATS = ("pyrovae-checkpoint-1",)
CONVERT_HINT = "pyrovae convert-checkpoint RUN_DIR --trust"
#: every key a checkpoint holds ("algorithm": the algorithm's own state, e.g. mcem's chains)
TOP_KEYS = frozenset({"format", *TRAINING_STATE_KEYS, "event_shape", "num_classes", "config", "data", "metrics"})
def save_checkpoint(path, training_state: Dict[str, Any], event_shape, config: Config,
                    fingerprint: Dict[str, Any], metrics: List[Dict], kept: str = "",
                    num_classes: Optional[int] = None, copies: Sequence = ()) -> None:
    """Write a training state (model, optimizer, rng, counters: what the loop restores) with
    what :func:`pyrovae.app.opening.load` needs to rebuild the model without its data (event shape, number of
    classes, config), the data's fingerprint and the metrics records so far; atomically (see
    :mod:`pyrovae.app.files`). ``copies``: further paths that get the same bytes (``best.pt``)."""
    state = {"format": FORMAT, **training_state, "event_shape": list(event_shape), "num_classes": num_classes,
             "config": config.to_dict(), "data": dict(fingerprint), "metrics": [dict(r) for r in metrics]}
    buffer = io.BytesIO()  # serialized first: a full disk is then an OSError of the write, not torch's own error
    torch.save(state, buffer)
    for target in (path, *copies):
        atomic_write_bytes(Path(target), lambda f: f.write(buffer.getbuffer()), kept)


def _torch_load(path: Path, weights_only: bool = True):
    """``torch.load`` for the converter of older checkpoints (``weights_only=False`` only when trusted)."""
    with warnings.catch_warnings():  # sparse tensors make torch warn about its O(nnz) check
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def read_checkpoint(path) -> Dict[str, Any]:
    """Load and check a checkpoint, or raise :class:`RunDirError` in one line.

    Nothing is allocated or run before it is checked: the zip archive's entries must be
    uncompressed (:func:`_archive_problem`), the pickle is read with
    ``torch.load(..., weights_only=True, mmap=True)`` (tensors stay in the file, mapped, and no
    Python object beyond tensors and plain containers is ever built, so no code in it runs), then
    every key, type and tensor is checked (:func:`checkpoint_problem`: dense, contiguous, no
    stride 0, no storage beyond its shape, no unknown keys, counters and records consistent).
    Only then are the tensors copied into memory.
    """
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: no checkpoint here")
    try:
        state = load_torch_file(path)
    except UnsafeFile as e:
        raise RunDirError(f"{path}: refused unread: {e}") from None
    except RecursionError:
        raise RunDirError(f"{path}: not a readable checkpoint (nested too deeply)") from None
    except Exception as e:
        needed = needed_object(e)
        if needed:
            raise RunDirError(f"{path}: refused: it needs the Python object {shown(needed)}, and "
                              "pyrovae loads only tensors and plain containers (loading it could run code); "
                              f"an older pyrovae checkpoint you trust converts with: {as_typed(CONVERT_HINT)}") \
                from None
        reason = str(e).splitlines()[0] if str(e) else ""
        raise RunDirError(f"{path}: not a readable checkpoint ({type(e).__name__}: {one_line(reason, 120)})") from None
    if isinstance(state, dict) and state.get("format") in OLD_FORMATS:
        raise RunDirError(f"{path}: a checkpoint of an older pyrovae ({shown(state['format'])}); "
                          f"if you trust it, convert it with: {as_typed(CONVERT_HINT)}")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunDirError(f"{path}: not a pyrovae checkpoint")
    try:
        problem = checkpoint_problem(state)
    except RecursionError:
        problem = "nested too deeply"
    if problem:
        raise RunDirError(f"{path}: malformed checkpoint: {problem}")
    return _in_memory(state)


def _in_memory(obj):
    """A checked state with every tensor copied out of the file's mapping."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _in_memory(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_in_memory(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_in_memory(v) for v in obj)
    return obj


def _is_dict_of(value, key_type, value_check) -> bool:
    return isinstance(value, dict) and all(isinstance(k, key_type) and value_check(v) for k, v in value.items())


def _plain_tensor(t) -> bool:
    return isinstance(t, torch.Tensor) and t.layout == torch.strided and not t.is_meta and not t.is_quantized


def _tensors(obj, path="") -> List[tuple]:
    """Every tensor in a nest of lists and dicts, with where it is."""
    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    if isinstance(obj, dict):
        return [t for k, v in obj.items() for t in _tensors(v, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, (list, tuple)):
        return [t for i, v in enumerate(obj) for t in _tensors(v, f"{path}[{i}]")]
    return []


def tensor_problem(t) -> Optional[str]:
    """What makes a saved tensor unsafe to hand to PyTorch (None if nothing): a sparse, meta or
    quantized layout, a stride of 0 or overlapping elements (an in-place update through it writes
    one element many times, or past its storage), or a storage larger than its shape implies."""
    if not _plain_tensor(t):
        return f"is a {'meta (no values)' if t.is_meta else 'quantized' if t.is_quantized else str(t.layout)} tensor"
    if not t.is_contiguous():
        return f"has strides {tuple(t.stride())} for shape {tuple(t.shape)} (a stride-0 or overlapping tensor)"
    if t.storage_offset() != 0 or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        return (f"has a storage of {t.untyped_storage().nbytes()} bytes for a shape of {t.numel()} elements "
                f"(offset {t.storage_offset()})")
    return None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v))


def _plain_values(v, depth: int = 0) -> bool:
    """Whether a nest holds only what a TOML config holds (strings, numbers, booleans, lists, tables)."""
    if depth > 32:
        return False
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain_values(x, depth + 1) for k, x in v.items())
    if isinstance(v, list):
        return all(_plain_values(x, depth + 1) for x in v)
    if isinstance(v, int) and not isinstance(v, bool):
        return -2**63 <= v < 2**63
    return isinstance(v, (str, float, bool))


def _scheduler_values(v, depth: int = 0) -> bool:
    """Whether a scheduler's state holds only what torch's schedulers write: None, numbers (infinities:
    ReduceLROnPlateau's ``best``), strings, and lists and string-keyed tables of them."""
    if depth > 8:
        return False
    if isinstance(v, dict):
        return all(isinstance(k, str) and _scheduler_values(x, depth + 1) for k, x in v.items())
    if isinstance(v, list):
        return len(v) <= 2**20 and all(_scheduler_values(x, depth + 1) for x in v)
    if isinstance(v, int) and not isinstance(v, bool):
        return -2**63 <= v < 2**63
    return v is None or isinstance(v, (str, float, bool))


def _optimizer_ok(v) -> bool:
    def group_value(x):
        return (x is None or isinstance(x, (bool, str)) or _number(x)
                or (isinstance(x, (list, tuple)) and len(x) <= 2**20 and all(_number(e) for e in x)))

    return (isinstance(v, dict) and set(v) == {"state", "param_groups"} and isinstance(v["param_groups"], list)
            and all(_is_dict_of(g, str, group_value) for g in v["param_groups"])
            and _is_dict_of(v["state"], int, lambda slots: _is_dict_of(
                slots, str, lambda t: isinstance(t, torch.Tensor) or _number(t))))


def checkpoint_problem(state: Dict[str, Any]) -> Optional[str]:
    """What is wrong with a loaded checkpoint dict (None if nothing): no keys but pyrovae's,
    each with its type; every tensor safe (:func:`tensor_problem`); one metrics record per
    finished epoch, numbered 1, 2, ...."""
    unknown = sorted(map(str, set(state) - TOP_KEYS))
    if unknown:
        return f"unknown key {shown(unknown[0])}; a checkpoint holds {', '.join(sorted(TOP_KEYS))}"
    for where, t in _tensors(state):
        problem = tensor_problem(t)
        if problem:
            return f"{shown(where)} {problem}; a checkpoint holds dense, contiguous tensors"
    checks = {
        "model": lambda v: _is_dict_of(v, str, lambda t: isinstance(t, torch.Tensor)),
        "optimizer": _optimizer_ok,
        "rng": _rng_ok,
        "counters": lambda v: Counters.problem(v) is None,
        "num_classes": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 2**20),
        "event_shape": lambda v: isinstance(v, list) and 1 <= len(v) <= 8
        and all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s < 2**31 for s in v),
        "config": lambda v: _is_dict_of(v, str, lambda t: isinstance(t, dict)) and _plain_values(v),
        "data": lambda v: isinstance(v, dict) and set(v) <= FINGERPRINT_KEYS
        and standardization_record_ok(v.get("standardization"), v)
        and all(isinstance(v.get(f"{s}_sha256"), str) and isinstance(v.get(f"{s}_shape"), list)
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in v[f"{s}_shape"])
                for s in ("train", "test", *(("validation",) if {"validation_shape", "validation_sha256"} & set(v)
                                             else ()))),
        "metrics": lambda v: isinstance(v, list) and all(EpochRecord.problem(r) is None for r in v),
        "algorithm": lambda v: isinstance(v, dict),
        "schedule": lambda v: isinstance(v, dict) and _scheduler_values(v),
        "scaler": lambda v: _is_dict_of(v, str, lambda t: isinstance(t, (int, float)) and not isinstance(t, bool)
                                        and math.isfinite(t)),
    }
    for key, ok in checks.items():
        if key not in state:
            if key in TrainingState.OPTIONAL:
                continue  # older checkpoints: algorithms without state of their own, no schedules, no scaler
            return f"no {key!r}"
        if not ok(state[key]):
            return f"{key!r} is not what pyrovae writes"
    epochs, records = state["counters"]["epoch"], state["metrics"]
    # one record per completed epoch, and where train.max_steps ended the next one part way, its record so far
    partial = len(records) == epochs + 1 and state["counters"]["epoch_step"] > 0
    if len(records) != epochs and not partial:
        return f"{len(records)} metrics records for {epochs} epochs"
    if [r["epoch"] for r in records] != list(range(1, len(records) + 1)):
        return "the metrics records are not one per epoch, numbered from 1"
    return None


def counters_problem(state: Dict[str, Any], config: Config) -> Optional[str]:
    """What is inconsistent between a checkpoint's counters and its run's config (None if
    nothing): the epoch at most ``train.epochs``, the step and the samples seen exactly what the
    finished epochs imply, the step inside an epoch below the steps per epoch, rollbacks at most
    ``train.max_rollbacks`` (the last two bounds as the checkpoint's own config had them: a
    resumed run may lower them). A counter out of range would skip epochs or misplace the data
    order."""
    c, t = state["counters"], config.train
    saved = state["config"].get("train", {})
    bound = {k: saved.get(k) if isinstance(saved.get(k), int) and not isinstance(saved.get(k), bool)
             else getattr(t, k) for k in ("epochs", "max_rollbacks")}
    n = state["data"]["train_shape"][0] if state["data"]["train_shape"] else 0
    num_labeled = config.data.labeled or 0  # data.labeled = K keeps exactly K labels
    family = MODELS.get(config.model.family) if config.model.family in MODELS else None
    per_epoch = steps_per_epoch(n, t.batch_size, t.labeled_per_batch, num_labeled,
                                resolved_labeled_weight(t.labeled_weight, n, num_labeled),
                                per_minibatch_labels(family, t.engine))
    expected = {"epoch": (0, bound["epochs"]), "epoch_step": (0, max(per_epoch - 1, 0)),
                "rollbacks": (0, bound["max_rollbacks"])}
    for key, (low, high) in expected.items():
        if not low <= c[key] <= high:
            return f"counters.{key} = {shown(c[key])}: must be in [{low}, {high}] for this run"
    if c["step"] != c["epoch"] * per_epoch or c["samples_seen"] != c["epoch"] * n:
        return (f"counters.step = {shown(c['step'])}, samples_seen = {shown(c['samples_seen'])} after "
                f"{c['epoch']} epochs of {per_epoch} steps and {n} points")
    return None


def _rng_ok(rng) -> bool:
    if not isinstance(rng, dict) or set(rng) != {"torch", "cuda", "noise", "numpy", "python"}:
        return False
    byte = lambda t: isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1  # noqa: E731
    n, p = rng.get("numpy"), rng.get("python")
    return (byte(rng.get("torch")) and byte(rng.get("noise")) and isinstance(rng.get("cuda"), list)
            and all(byte(t) for t in rng["cuda"])
            and isinstance(n, dict) and set(n) == {"name", "keys", "pos", "has_gauss", "cached_gaussian"}
            and isinstance(n.get("name"), str)
            and isinstance(n.get("keys"), torch.Tensor) and tuple(n["keys"].shape) == (624,)
            and n["keys"].dtype == torch.int64
            and all(isinstance(n.get(k), t) for k, t in (("pos", int), ("has_gauss", int), ("cached_gaussian", float)))
            and isinstance(p, dict) and set(p) == {"version", "state", "gauss_next"}
            and isinstance(p.get("version"), int)
            and isinstance(p.get("state"), torch.Tensor) and tuple(p["state"].shape) == (625,)
            and p["state"].dtype == torch.int64
            and (p.get("gauss_next") is None or isinstance(p["gauss_next"], float)))
