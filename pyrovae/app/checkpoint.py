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
- ``event_shape`` and ``config``: what :func:`load` needs to rebuild the model.

Every read goes through :func:`read_checkpoint`, which calls ``torch.load(...,
weights_only=True)``: PyTorch's restricted unpickler, which builds tensors and plain containers
and refuses every other Python object, so a file carrying a pickle payload cannot run code.
A file that needs more is refused in one line; an older pyrovae checkpoint (format 1, which
stored NumPy's RNG state as an array) from a source you trust is converted by
``pyrovae convert-checkpoint RUN_DIR --trust`` (:func:`convert_checkpoint`).
"""

import dataclasses
import hashlib
import io
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from pyrovae.app.config import Config, parse_toml, read_config_text, record_config, run_difference
from pyrovae.app.files import (
    BEST,
    CHECKPOINT,
    CONFIG,
    METRICS,
    RunLock,
    atomic_write_bytes,
    read_metrics,
    write_metrics,
)
from pyrovae.data.sampling import steps_per_epoch
from pyrovae.devices import resolve_device
from pyrovae.errors import ConfigError, RunDirError, needed_object, one_line, shell_word, shown
from pyrovae.models.base import Model
from pyrovae.models.registry import MODELS, build_family, takes_labels
from pyrovae.rng import plain_numpy_state, plain_python_state
from pyrovae.safe_load import UnsafeFile, load_torch_file
from pyrovae.training.checks import per_minibatch_labels
from pyrovae.training.memory import build_budget, meta_model
from pyrovae.training.records import COUNTERS, RECORD_KEYS, RENAMED_RECORD_KEYS, TRAINING_STATE_KEYS
from pyrovae.training.state import load_model_state
from pyrovae.training.train_config import resolved_labeled_weight

FORMAT = "pyrovae-checkpoint-2"
OLD_FORMATS = ("pyrovae-checkpoint-1",)
CONVERT_HINT = "pyrovae convert-checkpoint RUN_DIR --trust"
#: every key a checkpoint holds ("algorithm": the algorithm's own state, e.g. mcem's chains)
TOP_KEYS = frozenset({"format", *TRAINING_STATE_KEYS, "event_shape", "num_classes", "config", "data", "metrics"})
FINGERPRINT_KEYS = frozenset({"train_shape", "train_sha256", "test_shape", "test_sha256", "train_y_sha256",
                              "test_y_sha256", "labeled_sha256", "validation_shape", "validation_sha256",
                              "standardization"})


# -- the data's fingerprint ----------------------------------------------------------------
def _sha256(t: torch.Tensor, dtype) -> str:
    """SHA-256 of a tensor's values as little-endian ``dtype`` (the same bytes on every machine)."""
    values = t.detach().to("cpu", dtype).numpy()
    return hashlib.sha256(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).data).hexdigest()


def data_fingerprint(data) -> Dict[str, Any]:
    """The shapes and SHA-256 of the values (float32, little-endian) of a data set's splits (train,
    test and a validation split where there is one), and of their labels and the label mask where there are any."""
    out: Dict[str, Any] = {}
    for split, points in data.splits.items():  # read in chunks: a streamed split is never held whole
        out[f"{split}_shape"] = list(points.shape)
        out[f"{split}_sha256"] = points.sha256()
    for labels in ("train_y", "test_y", "labeled"):
        t = getattr(data, labels, None)
        if t is not None:
            out[f"{labels}_sha256"] = _sha256(t, torch.int64)
    if getattr(data, "standardization", None) is not None:  # data.standardize: the training split's statistics
        out["standardization"] = data.standardization.as_record()
    return out


def _standardization_ok(record, fingerprint) -> bool:
    """A fingerprint's standardization record: absent, or finite ``mean`` and positive ``std`` lists, one
    number per feature of the training points."""
    if record is None:
        return True
    shape = fingerprint.get("train_shape") or [0]
    features = math.prod(shape[1:]) if len(shape) > 1 else 0
    return isinstance(record, dict) and set(record) == {"mean", "std"} and all(
        isinstance(record[k], list) and len(record[k]) == features
        and all(isinstance(v, float) and math.isfinite(v) and (k == "mean" or v > 0) for v in record[k])
        for k in ("mean", "std"))


def fingerprint_difference(saved: Dict[str, Any], now: Dict[str, Any]) -> Optional[str]:
    """How the data now differ from the data a checkpoint was made with (None if they do not)."""
    for split in ("train", "test", "validation"):
        a, b = saved.get(f"{split}_shape"), now.get(f"{split}_shape")
        if a != b:
            return f"the {split} split has shape {tuple(b or ())}, the checkpoint's had {tuple(a or ())}"
        if saved.get(f"{split}_sha256") != now.get(f"{split}_sha256"):
            theirs = str(saved.get(f"{split}_sha256"))[:12]
            return (f"the {split} split has the same shape {tuple(b)} but other values "
                    f"(sha256 {str(now.get(f'{split}_sha256'))[:12]}..., the checkpoint's {theirs}...)")
    if saved.get("standardization") != now.get("standardization"):
        return "the standardization (data.standardize) differs"
    for labels, what in (("train_y", "the train split's labels"), ("test_y", "the test split's labels"),
                         ("labeled", "the choice of labelled points (data.labeled)")):
        if saved.get(f"{labels}_sha256") != now.get(f"{labels}_sha256"):
            return f"{what} differ" if saved.get(f"{labels}_sha256") and now.get(f"{labels}_sha256") else \
                f"{what}: {'none now' if saved.get(f'{labels}_sha256') else 'none in the checkpoint'}"
    return None


# -- writing and reading -------------------------------------------------------------------
def save_checkpoint(path, training_state: Dict[str, Any], event_shape, config: Config,
                    fingerprint: Dict[str, Any], metrics: List[Dict], kept: str = "",
                    num_classes: Optional[int] = None, copies: Sequence = ()) -> None:
    """Write a training state (model, optimizer, rng, counters: what the loop restores) with
    what :func:`load` needs to rebuild the model without its data (event shape, number of
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
                              f"an older pyrovae checkpoint you trust converts with: {CONVERT_HINT}") from None
        reason = str(e).splitlines()[0] if str(e) else ""
        raise RunDirError(f"{path}: not a readable checkpoint ({type(e).__name__}: {one_line(reason, 120)})") from None
    if isinstance(state, dict) and state.get("format") in OLD_FORMATS:
        raise RunDirError(f"{path}: a checkpoint of an older pyrovae ({shown(state['format'])}); "
                          f"if you trust it, convert it with: {CONVERT_HINT}")
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


def _record_ok(r) -> bool:
    """A metrics record as the loop writes it: known keys, each a number (or None, or a bool)."""
    return (isinstance(r, dict) and isinstance(r.get("epoch"), int)
            and set(r) <= set(RECORD_KEYS) | set(RENAMED_RECORD_KEYS)
            and all(v is None or isinstance(v, (bool, float)) or (isinstance(v, int) and abs(v) < 2**63)
                    for v in r.values()))


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
        "counters": lambda v: isinstance(v, dict) and set(v) == set(COUNTERS) and all(
            isinstance(v.get(k), t) and not isinstance(v.get(k), bool) and math.isfinite(v.get(k)) and v.get(k) >= 0
            and abs(v.get(k)) < 2**62 for k, t in COUNTERS.items()),
        "num_classes": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 2**20),
        "event_shape": lambda v: isinstance(v, list) and 1 <= len(v) <= 8
        and all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s < 2**31 for s in v),
        "config": lambda v: _is_dict_of(v, str, lambda t: isinstance(t, dict)) and _plain_values(v),
        "data": lambda v: isinstance(v, dict) and set(v) <= FINGERPRINT_KEYS
        and _standardization_ok(v.get("standardization"), v)
        and all(isinstance(v.get(f"{s}_sha256"), str) and isinstance(v.get(f"{s}_shape"), list)
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in v[f"{s}_shape"])
                for s in ("train", "test", *(("validation",) if {"validation_shape", "validation_sha256"} & set(v)
                                             else ()))),
        "metrics": lambda v: isinstance(v, list) and all(_record_ok(r) for r in v),
        "algorithm": lambda v: isinstance(v, dict),
        "schedule": lambda v: isinstance(v, dict) and _scheduler_values(v),
    }
    for key, ok in checks.items():
        if key not in state:
            if key in ("algorithm", "schedule"):
                continue  # older checkpoints: algorithms without state of their own, no schedules
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


def build_model(model_cfg, event_shape, num_classes: Optional[int] = None) -> Model:
    """A model from a ``[model]`` config and the data's event shape (and number of classes);
    networks too large to allocate are one ConfigError line."""
    try:
        return build_family(model_cfg, event_shape, num_classes)
    except (RuntimeError, MemoryError, OverflowError) as e:  # e.g. layers too large to allocate
        raise ConfigError(f"model: cannot build the networks for data of shape {tuple(event_shape)} "
                          f"({type(e).__name__}: {one_line(str(e), 120)})") from None


def checked_model_shapes(config: Config, event_shape, num_classes, device="cpu") -> Optional[Model]:
    """The run's model built on the meta device, within the memory ``device`` has (refused in one
    line, naming the largest size in ``[model]``, as soon as building it creates more than that:
    a flow count of 10^9 is refused at once, not built); None if it cannot be built there."""
    build = lambda: build_family(config.model, event_shape, num_classes)  # noqa: E731
    return meta_model(build, device, *_sizes(config, num_classes))


def build_run_model(config: Config, event_shape, num_classes, device="cpu") -> Model:
    """The run's model, built for real within the memory ``device`` has (see :func:`build_budget`)."""
    with build_budget(device, *_sizes(config, num_classes)):
        return build_model(config.model, event_shape, num_classes)


def _sizes(config: Config, num_classes) -> tuple:
    """What a refusal names: the ``[model]`` options, and the classes for a family that reads labels."""
    return config.model.to_dict(), num_classes if takes_labels(config.model.family) else None



def read_run_record(run_dir) -> Dict[str, Any]:
    """A run folder's ``config.toml`` as parsed (nothing validated, nothing run); a missing,
    hostile or malformed file is one :class:`RunDirError` line."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a pyrovae run folder (no {CONFIG})")
    try:
        return parse_toml(read_config_text(path), path)
    except ConfigError as e:
        raise RunDirError(str(e)) from None


def read_run_config(run_dir, plugins: Sequence[str] = (), command: str = "pyrovae evaluate RUN_DIR {plugins}",
                    recorded: Optional[Dict[str, Any]] = None) -> Config:
    """A run folder's ``config.toml`` (``recorded``: as already parsed), validated as the run's
    record: nothing it names runs, and only the ``plugins`` the user names (checked against the
    record) do (see :func:`pyrovae.app.config.record_config`). Hostile or malformed text is one line."""
    path = Path(run_dir) / CONFIG
    d = read_run_record(run_dir) if recorded is None else recorded
    try:
        return record_config(d, plugins, run_dir, command.replace("RUN_DIR", shell_word(run_dir)))
    except ConfigError as e:
        raise RunDirError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None


class OpenRun:
    """A run folder opened for reading: its config (``config.toml``, the one source of truth,
    with the checkpoint's copy checked against it), its checked checkpoint, and the model with its
    weights (on the CPU)."""

    def __init__(self, run_dir, config: Config, state: Dict[str, Any], model: Model):
        self.run_dir, self.config, self.state, self.model = Path(run_dir), config, state, model


def check_one_config(run_dir, recorded: Dict[str, Any], state: Dict[str, Any]) -> None:
    """The checkpoint's copy of the config must agree with ``config.toml`` (``recorded``, as parsed)
    on every key that makes the run what it is (data, model, plugins, algorithm, the keys
    ``--resume`` refuses to change, the optimizer): else one line naming the first key that differs."""
    differs = run_difference(recorded, state["config"], plugins=True)
    if differs:
        raise RunDirError(f"{Path(run_dir) / CHECKPOINT}: its config and {Path(run_dir) / CONFIG} differ in "
                          f"{differs}; a run has one config (config.toml, which the checkpoint's copy must match): "
                          "the folder was altered")


#: the checkpoints a run folder may hold, by ``which``
WHICH = {"last": CHECKPOINT, "best": BEST}


def checkpoint_path(run_dir, which: str = "last", flag: str = "which") -> Path:
    """The checkpoint ``which`` names in a run folder: ``last`` (``checkpoint.pt``) or ``best``
    (``best.pt``, kept by a run with ``train.early_stopping`` or a validation split)."""
    if which not in WHICH:
        raise RunDirError(f"{flag} = {shown(which)}: valid: {', '.join(WHICH)}")
    path = Path(run_dir) / WHICH[which]
    if which == "best" and not path.is_file() and (Path(run_dir) / CHECKPOINT).is_file():
        raise RunDirError(f"{path}: no best checkpoint here; a run keeps best.pt when it has a validation split "
                          "(data.validation_fraction) or train.early_stopping")
    return path


def open_run(run_dir, plugins: Sequence[str] = (), command: str = "pyrovae evaluate RUN_DIR {plugins}",
             device="cpu", model: Optional[Model] = None, which: str = "last") -> OpenRun:
    """Open a run folder without running anything from it (see :mod:`pyrovae.app.plugins`).

    ``config.toml`` is read as the run's record (only the ``plugins`` the user names run, checked
    against it); the checkpoint is read and checked (:func:`read_checkpoint`), its config
    checked against ``config.toml`` (:func:`check_one_config`) and its counters against the
    config; the model is sized on the meta device within the memory ``device`` has, then built,
    and the saved weights (names, shapes, dtypes, finite values) loaded into it. ``model``: an
    instance to load the weights into instead (a model built in Python). ``which``: the last
    checkpoint or the best epoch's (:func:`checkpoint_path`), checked alike.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: not a pyrovae run folder (no such folder)")
    path = checkpoint_path(run_dir, which)
    state = read_checkpoint(path)
    recorded = read_run_record(run_dir)
    check_one_config(run_dir, recorded, state)  # before anything the config names is looked at
    config = read_run_config(run_dir, plugins, command, recorded)
    problem = counters_problem(state, config)
    if problem:
        raise RunDirError(f"{path}: malformed checkpoint: {problem}")
    if model is None:
        try:
            checked_model_shapes(config, state["event_shape"], state.get("num_classes"), device)
        except ConfigError as e:
            raise RunDirError(f"{path}: the run's model: {e}") from None
        try:
            model = build_run_model(config, state["event_shape"], state.get("num_classes"), device)
        except ConfigError as e:
            raise RunDirError(f"{path}: the run's model: {e}") from None
    load_model_state(model, state["model"], path)
    return OpenRun(run_dir, config, state, model)


def load(run_dir, device="cpu", model: Optional[Model] = None, plugins: Sequence[str] = (),
         which: str = "last") -> Model:
    """The trained model of a run folder (a :class:`~pyrovae.VAE` for the ``vae`` family), on
    ``device`` (the CPU unless told otherwise): its last checkpoint, or with ``which="best"`` the
    best epoch's (``best.pt``: by ``train.early_stopping``'s metric, else the validation ELBO).

    Opening a run folder never runs code from it: the checkpoint is read with ``torch.load(...,
    weights_only=True)`` after its archive is checked, and nothing the folder names is imported.
    A run trained with plugins needs them named: ``plugins=["my_parts.py"]`` (files or dotted
    module names), each checked against the SHA-256 the run recorded and run from the bytes
    that were hashed; or import the plugin yourself before ``load``, so that its registries
    already hold what the run needs. Errors are :class:`~pyrovae.PyrovaeError` subclasses, as in
    the CLI (e.g. a ``ConfigError`` for ``device="cuda"`` on a machine without CUDA).

    ``model``: for a run trained on a model built in Python (``pyrovae.train(config, out,
    model=...)``), an instance of the same architecture to load the weights into (missing,
    unknown or misshapen parameters are one line).

    Example::

        vae = pyrovae.load("runs/digits")
        images = vae.sample(64)
    """
    device = resolve_device(str(device), "device")
    if isinstance(plugins, str):
        plugins = [plugins]
    opened = open_run(run_dir, plugins, f"pyrovae.load({str(run_dir)!r}, plugins={{plugin_list}})", device, model,
                      which)
    return opened.model.to(device).eval()


# -- converting an older checkpoint ---------------------------------------------------------
def convert_checkpoint(run_dir, data=None) -> Path:
    """Rewrite a run folder's format-1 checkpoint in the current, code-free format.

    **This unpickles the old file with** ``weights_only=False``, **which runs any code it
    carries**: call it only on a checkpoint from a source you trust (the CLI asks for
    ``--trust``). The RNG states become tensors, the metrics records are taken from
    ``metrics.jsonl`` up to the checkpoint's epoch, and the data fingerprint is taken from
    ``data`` (a :class:`~pyrovae.Dataset`; by default the data the run's config names, as they
    are now). The result is read back with :func:`read_checkpoint` before it replaces the old
    file. Returns the checkpoint's path.
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise RunDirError(f"{path}: no checkpoint here")
    try:
        current = _torch_load(path)
    except Exception:
        current = None  # not loadable without unpickling objects: possibly an older checkpoint
    if current is not None:
        done = isinstance(current, dict) and current.get("format") == FORMAT
        raise RunDirError(f"{path}: " + ("already in the current format; nothing to convert" if done
                                         else "not an older pyrovae checkpoint; nothing to convert"))
    try:
        old = _torch_load(path, weights_only=False)  # trusted by the caller: this may run code
    except Exception as e:
        raise RunDirError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(old, dict) or old.get("format") not in OLD_FORMATS:
        raise RunDirError(f"{path}: not an older pyrovae checkpoint; nothing to convert")
    rng = old["rng"]
    new_rng = {"torch": rng["torch"], "cuda": list(rng.get("cuda", [])), "noise": rng["noise"],
               "numpy": plain_numpy_state(rng["numpy"]), "python": plain_python_state(rng["python"])}
    counters = {"rollbacks": 0, **old["counters"]}
    records = []
    if (run_dir / METRICS).is_file():
        by_epoch = {r["epoch"]: r for r in read_metrics(run_dir) if isinstance(r.get("epoch"), int)}
        records = [by_epoch[e] for e in range(1, counters["epoch"] + 1) if e in by_epoch]
        if len(records) != counters["epoch"]:
            raise RunDirError(f"{run_dir / METRICS}: lacks records of some of the checkpoint's {counters['epoch']} "
                              "epochs; cannot convert")
    config = record_config(old["config"], keep_destinations=True)  # the old record, rewritten: nothing it names runs
    if data is None:  # and nothing it names is followed: no download
        data = dataclasses.replace(config, data=dataclasses.replace(config.data, download=False)).load_data()
    state = {"format": FORMAT, "model": old["model"], "optimizer": old["optimizer"], "rng": new_rng,
             "counters": counters, "event_shape": list(old["event_shape"]), "num_classes": None,
             "config": config.to_dict(),
             "data": data_fingerprint(data), "metrics": records}
    problem = checkpoint_problem(state)
    if problem:
        raise RunDirError(f"{path}: cannot convert: {problem}")
    with RunLock(run_dir, "convert"):
        atomic_write_bytes(path, lambda f: torch.save(state, f), "; the old checkpoint is kept")
        write_metrics(run_dir, records)
    read_checkpoint(path)
    return path
