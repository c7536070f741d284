"""A config read for a run: a user's own (a fresh run: its plugins run, its family's training
settings filled in) or a run's record (:func:`pyrovae.app.run_record.record_config`);
:func:`load_config` reads a TOML file (or the embedded default) and tells which it is."""

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pyrovae.app.config import Config, DataConfig, PluginsConfig, check_sections, checked_config, checked_section
from pyrovae.app.overrides import apply_overrides
from pyrovae.app.plugins import run_own_plugins
from pyrovae.app.run_record import enclosing_run_folder, record_config
from pyrovae.app.tomlfile import parse_toml, read_config_text
from pyrovae.data.datasets import DEFAULT_BINARIZE
from pyrovae.errors import ConfigError, one_line
from pyrovae.infer.elbos import ENGINES
from pyrovae.models.registry import MODELS, labeled_binarize, labeled_training
from pyrovae.training.train_config import TrainConfig


def config_from_dict(d: Dict[str, Any], base_dir: Optional[Path] = None, plugins: Sequence[str] = ()) -> Config:
    """Validate a user's own config, a parsed TOML document (missing keys take their defaults),
    for a fresh run. ``[plugins]`` comes first: its modules (relative files from ``base_dir``)
    and the extra ``plugins`` the user names are run from the bytes that are hashed, and
    recorded (:func:`pyrovae.app.plugins.run_own_plugins`), before the rest is checked."""
    check_sections(d)
    table = checked_section(PluginsConfig, d.get("plugins", {}), "plugins")
    recorded = table.record() if table.sha256 else None
    record = run_own_plugins([*table.modules, *plugins], base_dir, recorded)
    return checked_config(with_family_training({**d, "plugins": record.as_config()}))


def with_family_training(d: Dict[str, Any]) -> Dict[str, Any]:
    """A fresh run's config with the settings its family trains with under a label budget, where the
    config leaves them out: ``[train]`` keys (:func:`pyrovae.models.registry.labeled_training`) and
    a binarization in place of a dynamic default (:func:`pyrovae.models.registry.labeled_binarize`);
    and, for standardized data (``data.standardize``), a Gaussian likelihood where the family takes
    one and the config names none. They are then written in the run's ``config.toml`` like any
    other key."""
    model, data, train = (d.get(s, {}) for s in ("model", "data", "train"))
    if not all(isinstance(t, dict) for t in (model, data, train)):
        return d
    family = model.get("family", "vae")
    if data.get("standardize") is True and "likelihood" not in model and isinstance(family, str) \
            and family in MODELS and "likelihood" in MODELS.options(family):
        # standardized features are real numbers around 0: a Gaussian, not the default for pixels in [0, 1]
        model = {**model, "likelihood": "gaussian"}
        d = {**d, "model": model}
    if data.get("labeled") is None:
        return d
    batch = train.get("batch_size", TrainConfig.batch_size)
    if not isinstance(batch, int) or isinstance(batch, bool):
        return d  # refused by the [train] checks
    engine = train.get("engine", TrainConfig.engine)
    fill = labeled_training(family, train, batch, engine if engine in ENGINES else "torch")
    binarize = labeled_binarize(family)
    name = data.get("name", DataConfig.name)
    if binarize and data.get("binarize") is None and isinstance(name, str) and DEFAULT_BINARIZE.get(name) == "dynamic":
        d = {**d, "data": {**data, "binarize": binarize}}
    return {**d, "train": {**train, **fill}} if fill else d


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None, plugins: Sequence[str] = (),
                record_of=None, command: str = "pyrovae train --out RUN_DIR --resume {plugins}") -> Config:
    """Read a TOML config (or the embedded default when ``path`` is None) and apply overrides.

    A user's own config runs its ``[plugins]`` and the ``plugins`` named here
    (:func:`config_from_dict`). ``record_of`` (a run folder) says the file is that run's record,
    as is any config inside a run folder: then nothing it names runs, and ``plugins`` are checked
    against its record (:func:`record_config`). A user's config may hold a ``[tune]`` table (a
    search for ``pyrovae tune``): training it takes the config's own values and leaves that table out.
    """
    d: Dict[str, Any] = {}
    if path is not None:
        d = parse_toml(read_config_text(path), path)
        if record_of is None:
            record_of = enclosing_run_folder(path)
    where = path or "default config"
    try:
        if record_of is not None:  # the record's destinations are dropped before the user's overrides apply
            return record_config(d, plugins, record_of, command, overrides or ())
        d.pop("tune", None)  # a search's table (pyrovae tune): train takes the config's own values
        d = apply_overrides(d, overrides)
        return config_from_dict(d, Path(path).parent if path else None, plugins)
    except ConfigError as e:
        raise ConfigError(f"{set_by(str(e), overrides or ()) or where}: {e}") from None


def set_by(message: str, overrides: Sequence[str]) -> Optional[str]:
    """``--set KEY=VALUE``, the last override that set the key a config error names (its message
    starts with ``section.key`` or ``[section]``), or None: the error is the file's."""
    named = re.match(r"\[?([A-Za-z_][\w.]*)", message)
    if not named:
        return None
    key = named.group(1)
    for text in reversed(list(overrides)):
        path = text.split("=", 1)[0].strip()
        if path == key or path.startswith(key + ".") or key.startswith(path + "."):
            return f"--set {one_line(text, 80)}"
    return None
