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

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .config import Config, config_from_dict, parse_toml, read_config_text
from .devices import resolve_device
from .errors import ConfigError, RunDirError, needed_object, one_line, shown
from .models import MODELS, Model, takes_labels
from .runfolder import CHECKPOINT, CONFIG, METRICS, RunLock, atomic_write_bytes, write_metrics
from .state import load_model_state, plain_numpy_state, plain_python_state

FORMAT = "pyrovae-checkpoint-2"
OLD_FORMATS = ("pyrovae-checkpoint-1",)
COUNTERS = {"epoch": int, "step": int, "samples_seen": int, "epoch_step": int, "rollbacks": int,
            "epoch_loss": float, "epoch_elbo": float, "epoch_seconds": float}
CONVERT_HINT = "pyrovae convert-checkpoint RUN_DIR --trust"


# -- the data's fingerprint ----------------------------------------------------------------
def _sha256(t: torch.Tensor, dtype) -> str:
    """SHA-256 of a tensor's values as little-endian ``dtype`` (the same bytes on every machine)."""
    values = t.detach().to("cpu", dtype).numpy()
    return hashlib.sha256(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).data).hexdigest()


def data_fingerprint(data) -> Dict[str, Any]:
    """The shapes and SHA-256 of the values (float32, little-endian) of a data set's two splits,
    and of their labels and the label mask where there are any."""
    out: Dict[str, Any] = {}
    for split in ("train", "test"):
        t = getattr(data, split)
        out[f"{split}_shape"] = list(t.shape)
        out[f"{split}_sha256"] = _sha256(t, torch.float32)
    for labels in ("train_y", "test_y", "labeled"):
        t = getattr(data, labels, None)
        if t is not None:
            out[f"{labels}_sha256"] = _sha256(t, torch.int64)
    return out


def fingerprint_difference(saved: Dict[str, Any], now: Dict[str, Any]) -> Optional[str]:
    """How the data now differ from the data a checkpoint was made with (None if they do not)."""
    for split in ("train", "test"):
        a, b = saved.get(f"{split}_shape"), now[f"{split}_shape"]
        if a != b:
            return f"the {split} split has shape {tuple(b)}, the checkpoint's had {tuple(a or ())}"
        if saved.get(f"{split}_sha256") != now[f"{split}_sha256"]:
            theirs = str(saved.get(f"{split}_sha256"))[:12]
            return (f"the {split} split has the same shape {tuple(b)} but other values "
                    f"(sha256 {now[f'{split}_sha256'][:12]}..., the checkpoint's {theirs}...)")
    for labels, what in (("train_y", "the train split's labels"), ("test_y", "the test split's labels"),
                         ("labeled", "the choice of labelled points (data.labeled)")):
        if saved.get(f"{labels}_sha256") != now.get(f"{labels}_sha256"):
            return f"{what} differ" if saved.get(f"{labels}_sha256") and now.get(f"{labels}_sha256") else \
                f"{what}: {'none now' if saved.get(f'{labels}_sha256') else 'none in the checkpoint'}"
    return None


# -- writing and reading -------------------------------------------------------------------
def save_checkpoint(path, training_state: Dict[str, Any], event_shape, config: Config,
                    fingerprint: Dict[str, Any], metrics: List[Dict], kept: str = "",
                    num_classes: Optional[int] = None) -> None:
    """Write a training state (model, optimizer, rng, counters: what the loop restores) with
    what :func:`load` needs to rebuild the model without its data (event shape, number of
    classes, config), the data's fingerprint and the metrics records so far; atomically (see
    :mod:`pyrovae.runfolder`)."""
    state = {"format": FORMAT, **training_state, "event_shape": list(event_shape), "num_classes": num_classes,
             "config": config.to_dict(), "data": dict(fingerprint), "metrics": [dict(r) for r in metrics]}
    atomic_write_bytes(Path(path), lambda f: torch.save(state, f), kept)


def _torch_load(path: Path, weights_only: bool = True):
    with warnings.catch_warnings():  # sparse tensors make torch warn about its O(nnz) check
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def read_checkpoint(path) -> Dict[str, Any]:
    """Load and check a checkpoint, or raise :class:`RunDirError` in one line.

    Refused: a missing, truncated or foreign file; one that needs any Python object beyond
    tensors and plain containers (it is never unpickled, so no code in it runs); one whose keys,
    types or tensors are not those pyrovae writes (sparse or meta tensors included).
    """
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: no checkpoint here")
    try:
        state = _torch_load(path)
    except Exception as e:
        needed = needed_object(e)
        if needed:
            raise RunDirError(f"{path}: refused: it needs the Python object {shown(needed)}, and "
                              "pyrovae loads only tensors and plain containers (loading it could run code); "
                              f"an older pyrovae checkpoint you trust converts with: {CONVERT_HINT}") from None
        reason = str(e).splitlines()[0] if str(e) else ""
        raise RunDirError(f"{path}: not a readable checkpoint ({type(e).__name__}: {one_line(reason, 120)})") from None
    if isinstance(state, dict) and state.get("format") in OLD_FORMATS:
        raise RunDirError(f"{path}: a checkpoint of an older pyrovae ({state['format']}); "
                          f"if you trust it, convert it with: {CONVERT_HINT}")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunDirError(f"{path}: not a pyrovae checkpoint")
    problem = checkpoint_problem(state)
    if problem:
        raise RunDirError(f"{path}: malformed checkpoint: {problem}")
    return state


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


def checkpoint_problem(state: Dict[str, Any]) -> Optional[str]:
    """What is wrong with a loaded checkpoint dict (None if nothing): each key pyrovae reads,
    with its type; every tensor dense and with values."""
    for where, t in _tensors(state):
        if not _plain_tensor(t):
            kind = "meta (no values)" if t.is_meta else "quantized" if t.is_quantized else str(t.layout)
            return f"{shown(where)} is a {kind} tensor; a checkpoint holds dense tensors"
    checks = {
        "model": lambda v: _is_dict_of(v, str, lambda t: isinstance(t, torch.Tensor)),
        "optimizer": lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
        and isinstance(v.get("param_groups"), list) and all(isinstance(g, dict) for g in v["param_groups"]),
        "rng": _rng_ok,
        "counters": lambda v: isinstance(v, dict) and all(
            isinstance(v.get(k), t) and not isinstance(v.get(k), bool) and math.isfinite(v.get(k)) and v.get(k) >= 0
            for k, t in COUNTERS.items()),
        "num_classes": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 2**20),
        "event_shape": lambda v: isinstance(v, list) and 1 <= len(v) <= 8
        and all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s < 2**31 for s in v),
        "config": lambda v: _is_dict_of(v, str, lambda t: isinstance(t, dict)),
        "data": lambda v: isinstance(v, dict) and all(isinstance(v.get(f"{s}_sha256"), str)
                                                      and isinstance(v.get(f"{s}_shape"), list)
                                                      for s in ("train", "test")),
        "metrics": lambda v: isinstance(v, list) and all(isinstance(r, dict) and isinstance(r.get("epoch"), int)
                                                         for r in v),
    }
    for key, ok in checks.items():
        if key not in state:
            return f"no {key!r}"
        if not ok(state[key]):
            return f"{key!r} is not what pyrovae writes"
    if len(state["metrics"]) != state["counters"]["epoch"]:
        return f"{len(state['metrics'])} metrics records for {state['counters']['epoch']} epochs"
    return None


def _rng_ok(rng) -> bool:
    if not isinstance(rng, dict):
        return False
    byte = lambda t: isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1  # noqa: E731
    n, p = rng.get("numpy"), rng.get("python")
    return (byte(rng.get("torch")) and byte(rng.get("noise")) and isinstance(rng.get("cuda"), list)
            and all(byte(t) for t in rng["cuda"])
            and isinstance(n, dict) and isinstance(n.get("name"), str)
            and isinstance(n.get("keys"), torch.Tensor) and tuple(n["keys"].shape) == (624,)
            and all(isinstance(n.get(k), t) for k, t in (("pos", int), ("has_gauss", int), ("cached_gaussian", float)))
            and isinstance(p, dict) and isinstance(p.get("version"), int)
            and isinstance(p.get("state"), torch.Tensor) and tuple(p["state"].shape) == (625,)
            and (p.get("gauss_next") is None or isinstance(p["gauss_next"], float)))


def new_model(model_cfg, event_shape, num_classes: Optional[int] = None) -> Model:
    """The family a ``[model]`` config names, built for the data's event shape (and number of
    classes, for families that take it); errors as they come (see :func:`build_model`)."""
    if takes_labels(model_cfg.family) and num_classes is None:
        raise ConfigError(f"model.family = {model_cfg.family!r} needs labelled data (num_classes), and the data "
                          "have no labels")
    return MODELS.build({"name": model_cfg.family, **model_cfg.options}, "model", event_shape=tuple(event_shape),
                        num_classes=num_classes)


def build_model(model_cfg, event_shape, num_classes: Optional[int] = None) -> Model:
    """A model from a ``[model]`` config and the data's event shape (and number of classes);
    networks too large to allocate are one ConfigError line."""
    try:
        return new_model(model_cfg, event_shape, num_classes)
    except (RuntimeError, MemoryError, OverflowError) as e:  # e.g. layers too large to allocate
        raise ConfigError(f"model: cannot build the networks for data of shape {tuple(event_shape)} "
                          f"({type(e).__name__}: {one_line(str(e), 120)})") from None


def read_run_config(run_dir) -> Config:
    """A run folder's ``config.toml``, validated; hostile or malformed text is one line."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise RunDirError(f"{run_dir}: not a pyrovae run folder (no {CONFIG})")
    try:
        return config_from_dict(parse_toml(read_config_text(path), path))
    except ConfigError as e:
        raise RunDirError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None


def model_from_checkpoint(state: Dict[str, Any], where) -> Model:
    """The model a checked checkpoint describes, with its weights."""
    try:
        config = config_from_dict(state["config"])
    except ConfigError as e:
        raise RunDirError(f"{where}: the checkpoint's config: {e}") from None
    model = build_model(config.model, state["event_shape"], state.get("num_classes"))
    load_model_state(model, state["model"], where)
    return model


def load(run_dir, device="cpu", model: Optional[Model] = None) -> Model:
    """The trained model of a run folder (a :class:`~pyrovae.VAE` for the ``vae`` family), on
    ``device`` (the CPU unless told otherwise).

    The checkpoint is read with ``torch.load(..., weights_only=True)``: opening a run folder
    never runs code from it. Errors are :class:`~pyrovae.PyrovaeError` subclasses, as in the
    CLI (e.g. a ``ConfigError`` for ``device="cuda"`` on a machine without CUDA).

    ``model``: for a run trained on a model built in Python (``pyrovae.train(config, out,
    model=...)``), an instance of the same architecture to load the weights into (missing,
    unknown or misshapen parameters are one line).

    Example::

        vae = pyrovae.load("runs/digits")
        images = vae.sample(64)
    """
    device = resolve_device(str(device), "device")
    path = Path(run_dir) / CHECKPOINT
    state = read_checkpoint(path)
    if model is None:
        model = model_from_checkpoint(state, path)
    else:
        load_model_state(model, state["model"], path)
    return model.to(device).eval()


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
        by_epoch = {}
        for line in (run_dir / METRICS).read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line
            if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                by_epoch[record["epoch"]] = record
        records = [by_epoch[e] for e in range(1, counters["epoch"] + 1) if e in by_epoch]
        if len(records) != counters["epoch"]:
            raise RunDirError(f"{run_dir / METRICS}: lacks records of some of the checkpoint's {counters['epoch']} "
                              "epochs; cannot convert")
    config = config_from_dict(old["config"])
    if data is None:
        data = config.data.load()
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
