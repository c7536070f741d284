"""A run's own config, its record: read as data, compared on resume, and the folder it lies in.

A run folder is data and names no destination: :func:`record_config` runs nothing the record
names (only the plugins the user names, checked against the recorded hashes) and follows no
destination it names (:func:`without_destinations`); :func:`run_difference` says whether two
configs are one run (what ``--resume`` may change); :func:`enclosing_run_folder` tells a config
inside a run folder, which is then read as that run's record.
"""

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from pyrovae.app.config import DATA_DEFAULTS, Config, check_sections, checked_config
from pyrovae.app.files import CHECKPOINT, CONFIG, LOCK, METRICS
from pyrovae.app.overrides import apply_overrides
from pyrovae.app.plugins import needs_plugins_message, parse_record, run_named_plugins
from pyrovae.errors import ConfigError, UnknownNameError, one_line
from pyrovae.infer.algorithms import ALGORITHMS, algorithm_name
from pyrovae.training.train_config import TrainConfig

#: [data] keys that say how the data are read, not which: a resumed run may change them (and opening a
#: run never downloads: :func:`without_destinations`)
READING_KEYS = frozenset({"in_memory", "num_workers", "download"})


def run_difference(a: Dict[str, Any], b: Dict[str, Any], plugins: bool = False) -> Optional[str]:
    """The first ``section.key`` in which two resolved configs (as dicts) differ in a way that makes
    them two runs: the data, the model, the algorithm and the keys it cannot resume across (batch
    size, estimator, seed, ...), the optimizer's name, and with ``plugins`` the plugin record.
    Others (``train.epochs``, ``eval_every``, the device, ...) may change when a run is resumed."""
    sections = ("data", "model", *(("plugins",) if plugins else ()))
    for section in sections:
        x, y = a.get(section, {}), b.get(section, {})
        if not isinstance(x, dict) or not isinstance(y, dict):
            return f"[{section}]"
        if section == "data":  # a key an earlier version did not write has its default (validation_fraction)
            x, y = ({**DATA_DEFAULTS, **v} for v in (x, y))
        if section == "plugins":  # a record written before plugins.files existed lacks it: empty lists
            x, y = ({k: v.get(k, []) for k in {"modules", "files", "sha256"} | set(v)} for v in (x, y))
        for key in sorted(set(x) | set(y), key=str):
            if section == "data" and key in READING_KEYS:
                continue
            if x.get(key) != y.get(key):
                return f"{section}.{one_line(str(key), 40)}"
    defaults = dataclasses.asdict(TrainConfig())
    ta, tb = a.get("train", {}), b.get("train", {})
    if not isinstance(ta, dict) or not isinstance(tb, dict):
        return "[train]"
    algorithm = tb.get("algorithm", defaults["algorithm"])
    name = algorithm_name(algorithm) if isinstance(algorithm, (str, dict)) else None
    keys = ALGORITHMS.get(name).resume_keys if isinstance(name, str) and name in ALGORITHMS else ()
    for key in ("algorithm", *keys):
        if ta.get(key, defaults[key]) != tb.get(key, defaults[key]):
            return f"train.{key}"
    oa, ob = a.get("optim", {}), b.get("optim", {})
    if not isinstance(oa, dict) or not isinstance(ob, dict) or oa.get("name") != ob.get("name"):
        return "optim.name"
    if oa.get("schedule", "constant") != ob.get("schedule", "constant"):  # its state continues in the checkpoint
        return "optim.schedule"
    return None


#: the [log] keys that name a destination (where a run is tracked): a run's record of them is never followed
DESTINATION_KEYS = ("mlflow", "mlflow_uri")


def without_destinations(d: Dict[str, Any]) -> Dict[str, Any]:
    """A run's record with every destination it names dropped (a run folder is data, and names
    no destination: ``docs/run-folders.md``): its MLflow tracking (``log.mlflow``,
    ``log.mlflow_uri``, shown by :func:`pyrovae.app.tracking.tracking_notice` instead) and any
    download into ``data.path`` (``data.download = false``). The user's own command line, applied
    after this, may name them again."""
    out = dict(d)
    if isinstance(out.get("log"), dict):
        out["log"] = {k: v for k, v in out["log"].items() if k not in DESTINATION_KEYS}
        if isinstance(out["log"].get("callbacks"), list):  # "mlflow" there is log.mlflow
            out["log"]["callbacks"] = [spec for spec in out["log"]["callbacks"] if not _names_mlflow(spec)]
    if isinstance(out.get("data", {}), dict):
        out["data"] = {**out.get("data", {}), "download": False}
    return out


def _names_mlflow(spec) -> bool:
    return spec == "mlflow" or (isinstance(spec, dict) and spec.get("name") == "mlflow")


def record_config(d: Dict[str, Any], plugins: Sequence[str] = (), run_dir=None,
                  command: str = "pyrovae evaluate RUN_DIR {plugins}", overrides: Sequence[str] = (),
                  keep_destinations: bool = False) -> Config:
    """Validate a run's own config (its record), running nothing it names and following no
    destination it names (:func:`without_destinations`; ``keep_destinations``: kept as recorded,
    for rewriting the record itself, never for acting on it); then the user's ``overrides``.

    ``[plugins]`` is read as the run's record (:func:`pyrovae.app.plugins.parse_record`); only the
    ``plugins`` the user names run, each checked against that record first (none from inside
    ``run_dir``). A config that names a part or family no registry holds while recorded plugins
    were left unnamed is one line that names what it needs, the recorded files and their
    SHA-256, and ``command`` (with ``{plugins}`` for the flags) to open the run with them.
    """
    check_sections(d)
    d = apply_overrides(d if keep_destinations else without_destinations(d), list(overrides))
    record = parse_record(d.get("plugins", {}))
    named = run_named_plugins(plugins, record, run_dir)
    try:
        return checked_config({**d, "plugins": record.as_config()})
    except UnknownNameError as e:
        unnamed = [i for i in range(len(record.files)) if i not in named]
        if not unnamed:
            raise
        raise ConfigError(needs_plugins_message(e, record, unnamed, command, run_dir)) from None


#: what a run folder holds besides its config.toml, any one of which marks it as one
RUN_FOLDER_MARKS = (CHECKPOINT, METRICS, LOCK)


def enclosing_run_folder(path) -> Optional[Path]:
    """The run folder a file lies in (the nearest folder above it that holds a ``config.toml``
    beside a checkpoint, metrics or lock file), or None."""
    for folder in Path(path).resolve().parents:
        if (folder / CONFIG).is_file() and any((folder / m).exists() for m in RUN_FOLDER_MARKS):
            return folder
    return None
