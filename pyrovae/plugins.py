"""User code named in a config: ``[plugins] modules = ["my_parts", "path/to/file.py"]``.

Each entry is an importable module name or a ``.py`` file (a relative path is taken from the
config file's folder, or the working directory for ``--set``). The modules are imported before
the rest of the config is checked, so the priors, likelihoods, networks, model families and
estimators they register (``@pyrovae.PRIORS.register("name")``, ...) can be named in the same
config like built-ins.

The resolved config records each file by its absolute path with the SHA-256 of its bytes, and
a run folder keeps a copy of each file (``RUN_DIR/plugins/``, for reading). ``evaluate``,
``sample``, ``--resume`` and :func:`pyrovae.load` import the plugins again from where they were,
from any working directory, and only while each file still has its recorded hash; the copies
in the folder are never imported. **Importing a plugin runs its code**: open a run folder that
names plugins only if you trust them (see the README's Security section).
"""

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .errors import ConfigError, one_line, shown

_IMPORTED: Dict[str, object] = {}  # absolute path -> module: a file is executed once per process


def is_file_entry(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolve(modules: Sequence[str], base_dir: Optional[Path] = None) -> List[str]:
    """Entries with file paths made absolute (relative ones from ``base_dir``, else the working directory)."""
    out = []
    for entry in modules:
        if is_file_entry(entry):
            path = Path(entry).expanduser()
            out.append(str((path if path.is_absolute() else (base_dir or Path.cwd()) / path).resolve()))
        else:
            out.append(entry)
    return out


def import_plugins(modules: Sequence[str], sha256: Optional[Sequence[str]] = None) -> List[str]:
    """Import every entry (see the module docstring); returns the SHA-256 of each file entry
    ('' for module names). With ``sha256`` (a run's record), a file whose bytes changed is refused."""
    hashes = []
    for i, entry in enumerate(modules):
        if not isinstance(entry, str) or not entry:
            raise ConfigError(f"plugins.modules: entry {shown(entry)}: expected a module name or a .py file")
        if not is_file_entry(entry):
            if not re.fullmatch(r"[A-Za-z_][\w.]*", entry):
                raise ConfigError(f"plugins.modules: {shown(entry)} is neither a module name nor a .py file")
            _run(lambda: importlib.import_module(entry), entry)
            hashes.append("")
            continue
        path = Path(entry)
        if not path.is_file():
            raise ConfigError(f"plugins.modules: {shown(entry)}: no such file")
        digest = file_sha256(path)
        if sha256 is not None and i < len(sha256) and sha256[i] and sha256[i] != digest:
            raise ConfigError(f"plugins.modules: {shown(entry)} changed since the run recorded it (sha256 "
                              f"{digest[:12]}..., recorded {str(sha256[i])[:12]}...); restore it, or start a new run")
        if entry not in _IMPORTED:
            name = f"pyrovae_plugin_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest[:8]}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                _run(lambda: spec.loader.exec_module(module), entry)
            except ConfigError:
                sys.modules.pop(name, None)
                raise
            _IMPORTED[entry] = module
        hashes.append(digest)
    return hashes


def _run(fn, entry: str) -> None:
    """Import errors of any kind (the plugin's own code included) are one ConfigError line."""
    try:
        fn()
    except ConfigError:
        raise
    except BaseException as e:  # noqa: BLE001 - a plugin may raise anything, SystemExit included
        if isinstance(e, KeyboardInterrupt):
            raise
        raise ConfigError(f"plugins.modules: cannot import {shown(entry)} ({type(e).__name__}: "
                          f"{one_line(str(e), 160)})") from None
