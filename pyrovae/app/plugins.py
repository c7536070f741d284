"""User code: plugins that register priors, likelihoods, networks, model families, estimators.

**The trust rule.** A plugin runs only when the user names it, and only from the bytes that
were hashed:

- in a fresh ``pyrovae train CONFIG.toml``, the ``[plugins] modules`` of the user's own config
  (that config is the user's program; relative files are taken from its folder), and any
  ``--plugins`` given on the command line;
- when a run is opened (``evaluate``, ``sample``, ``train --resume``, :func:`pyrovae.load`),
  only what the user names with ``--plugins`` / ``plugins=[...]``. The run's record (its
  ``config.toml`` and checkpoint) never leads to an import: it only says which files, with
  which SHA-256, the run was made with, and a named plugin must be one of them.

**One read.** A plugin is a ``.py`` file, or a module named by its dotted name, which is
resolved to its source file on ``sys.path`` *without importing anything* (a package's
``__init__`` does not run; a module with no source file, such as a compiled extension, is
refused). The file is read once; its SHA-256 is taken from those bytes, compared with the
run's record where there is one, and those same bytes are compiled and executed: no second
read, no ``.pyc``, no import system in between. A file is executed at most once per process.

**The record.** ``[plugins]`` in a run's config holds three lists of equal length: ``modules``
(as named: a dotted name, or a file's absolute path), ``files`` (each entry's resolved source
file) and ``sha256`` (of its bytes). Each entry always has its file and hash. A run folder keeps
a copy of each file in ``RUN_DIR/plugins/`` for reading; nothing inside a run folder is ever run:
a plugin file that lies inside the folder being opened is refused, whoever names it.

What a plugin itself imports is imported by Python as usual: only the named file is hashed.
"""

import hashlib
import importlib.machinery
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from pyrovae.errors import ConfigError, as_typed, one_line, shell_word, shown
from pyrovae.registry import check_keys

#: the largest plugin source file read (a plugin is a few kilobytes of Python)
MAX_PLUGIN_BYTES = 16 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_EXECUTED: Dict[tuple, types.ModuleType] = {}  # (file, sha256) -> module: each file's bytes run once per process
_SOURCES: Dict[tuple, bytes] = {}  # (file, sha256) -> the bytes that ran


@dataclass(frozen=True)
class PluginSource:
    """One plugin, read once: as named (``entry``), its source ``file``, the ``source`` bytes and their SHA-256."""

    entry: str
    file: Path
    source: bytes
    sha256: str


@dataclass(frozen=True)
class PluginRecord:
    """What a run records of its plugins: parallel lists of entries, files and hashes."""

    modules: tuple = ()
    files: tuple = ()
    sha256: tuple = ()

    def describe(self) -> str:
        return ", ".join(f"{shown(f, 200)} (sha256 {h})" for f, h in zip(self.files, self.sha256))

    def as_config(self) -> Dict[str, List[str]]:
        return {"modules": list(self.modules), "files": list(self.files), "sha256": list(self.sha256)}


def is_file_entry(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def _check_entry(entry) -> str:
    if not isinstance(entry, str) or not entry:
        raise ConfigError(f"plugins.modules: entry {shown(entry)}: expected a module name or a .py file")
    if not is_file_entry(entry) and not _MODULE_NAME.fullmatch(entry):
        raise ConfigError(f"plugins.modules: {shown(entry)} is neither a module name nor a .py file")
    return entry


def module_source_file(name: str) -> Path:
    """The source file of the module a dotted name names, found on ``sys.path`` as Python's
    import system would, but without importing anything (no parent package runs)."""
    search = None  # sys.path
    spec = None
    parts = name.split(".")
    for i in range(len(parts)):
        prefix = ".".join(parts[: i + 1])
        try:
            spec = importlib.machinery.PathFinder.find_spec(prefix, search)
        except (ImportError, ValueError, OSError):
            spec = None
        if spec is None:
            raise ConfigError(f"plugins: no module named {shown(prefix)} on the Python path")
        if i < len(parts) - 1:
            search = spec.submodule_search_locations
            if search is None:
                raise ConfigError(f"plugins: {shown(prefix)} is not a package, so it has no module {shown(name)}")
    origin = spec.origin if spec.has_location else None
    if not origin or not origin.endswith(".py"):
        raise ConfigError(f"plugins: module {shown(name)} has no Python source file ({shown(origin)}); a plugin "
                          "is run from the source bytes that are hashed, so it must be a .py file")
    return Path(origin).resolve()


def read_plugin(entry: str, base_dir: Optional[Path] = None) -> PluginSource:
    """Resolve a plugin entry (a ``.py`` file, relative ones from ``base_dir`` or the working
    directory, or a dotted module name) to its source file, and read that file once."""
    entry = _check_entry(entry)
    if is_file_entry(entry):
        path = Path(entry).expanduser()
        file = (path if path.is_absolute() else (base_dir or Path.cwd()) / path).resolve()
        named = str(file)
    else:
        file, named = module_source_file(entry), entry
    try:
        if not file.is_file():
            raise ConfigError(f"plugins: {shown(entry, 200)}: no such file")
        if file.stat().st_size > MAX_PLUGIN_BYTES:
            raise ConfigError(f"plugins: {shown(str(file), 200)}: larger than {MAX_PLUGIN_BYTES >> 20} MiB")
        with open(file, "rb") as f:
            source = f.read(MAX_PLUGIN_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"plugins: {shown(str(file), 200)}: cannot read ({e.strerror or type(e).__name__})") from None
    return PluginSource(named, file, source, hashlib.sha256(source).hexdigest())


def execute(plugin: PluginSource) -> types.ModuleType:
    """Compile and run a plugin's bytes (those that were hashed) as a module, once per process.

    A dotted name runs as that module (``sys.modules[name]``, so its relative imports work); a
    file runs as ``pyrovae_plugin_<stem>_<hash>``. Any error the plugin's code raises, ``SystemExit``
    included, is one :class:`ConfigError` line.
    """
    key = (str(plugin.file), plugin.sha256)
    if key in _EXECUTED:
        return _EXECUTED[key]
    if is_file_entry(plugin.entry):
        name = f"pyrovae_plugin_{re.sub(r'[^0-9A-Za-z_]', '_', plugin.file.stem)}_{plugin.sha256[:8]}"
        package = ""
    else:
        name = plugin.entry
        package = name if plugin.file.name == "__init__.py" else name.rpartition(".")[0]
    module = types.ModuleType(name)
    module.__file__ = str(plugin.file)
    module.__package__ = package
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, origin=str(plugin.file))
    module.__spec__.has_location = True
    previous = sys.modules.get(name)
    sys.modules[name] = module  # dataclasses, pickling and relative imports look the module up here
    try:
        code = compile(plugin.source, str(plugin.file), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except BaseException as e:  # noqa: BLE001 - a plugin may raise anything, SystemExit included
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        if isinstance(e, KeyboardInterrupt):
            raise
        raise ConfigError(f"plugins: cannot import {shown(plugin.entry, 200)} ({type(e).__name__}: "
                          f"{one_line(str(e), 160)})") from None
    _EXECUTED[key], _SOURCES[key] = module, plugin.source
    return module


def source_of(file, sha256: str) -> Optional[bytes]:
    """The bytes this process ran for a plugin file with this hash (None if it ran none): what a
    run folder keeps a copy of, never a second read of the file."""
    return _SOURCES.get((str(file), sha256))


def run_own_plugins(modules: Sequence[str], base_dir: Optional[Path] = None,
                    recorded: Optional[PluginRecord] = None) -> PluginRecord:
    """Run the plugins a user's own config names (a fresh ``train``) and return their record.

    ``recorded``: a record the config already carries (a config pyrovae wrote, used again outside
    its run folder): an entry whose file's bytes changed since is refused.
    """
    sources = []
    for i, entry in enumerate(modules):
        plugin = read_plugin(entry, base_dir)
        if recorded is not None and i < len(recorded.sha256) and recorded.sha256[i] != plugin.sha256:
            raise ConfigError(f"plugins.modules: {shown(str(plugin.file), 200)} changed since the run recorded it "
                              f"(sha256 {plugin.sha256}, recorded {recorded.sha256[i]}); restore it, or remove "
                              "plugins.files and plugins.sha256 from the config to record it anew")
        sources.append(plugin)
    for plugin in sources:
        execute(plugin)
    return record_of(sources)


def record_of(sources: Sequence[PluginSource]) -> PluginRecord:
    unique = list({(p.entry, str(p.file), p.sha256): p for p in sources}.values())
    return PluginRecord(tuple(p.entry for p in unique), tuple(str(p.file) for p in unique),
                        tuple(p.sha256 for p in unique))


def parse_record(table, where: str = "plugins") -> PluginRecord:
    """A run's ``[plugins]`` table as a record, checked: three lists of equal length, each
    entry a module name or an absolute ``.py`` path, each file absolute, each hash 64 hex digits.
    Nothing is read or run."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}] must be a table, got {shown(table)}")
    check_keys(where, sorted(table, key=str), ("files", "modules", "sha256"))
    lists = {k: table.get(k, []) for k in ("modules", "files", "sha256")}
    for key, value in lists.items():
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}.{key} = {shown(value)}: expected a list of strings")
    modules, files, hashes = lists["modules"], lists["files"], lists["sha256"]
    if not len(modules) == len(files) == len(hashes):
        raise ConfigError(f"{where}: the run records {len(modules)} modules with {len(files)} files and "
                          f"{len(hashes)} sha256; each plugin is recorded with its file and hash, so the record "
                          "is not pyrovae's (a run made by an older pyrovae: train it again, or record it anew)")
    for entry, file, digest in zip(modules, files, hashes):
        _check_entry(entry)
        if not _SHA256.fullmatch(digest):
            raise ConfigError(f"{where}.sha256: {shown(digest)} for {shown(entry)} is not a SHA-256 (64 hex digits)")
        if not file.endswith(".py") or not Path(file).is_absolute():
            raise ConfigError(f"{where}.files: {shown(file)} for {shown(entry)} is not an absolute path of a .py file")
    return PluginRecord(tuple(modules), tuple(files), tuple(hashes))


def inside(path, folder) -> bool:
    """Whether ``path`` (links resolved) lies inside ``folder`` (links resolved)."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


def run_named_plugins(named: Sequence[str], record: PluginRecord, run_dir=None,
                      where: str = "plugins") -> List[int]:
    """Run the plugins a user names when opening a run, each checked against the run's record
    first; returns the indices of the record entries they are.

    A named plugin must be one of the run's (its bytes' SHA-256 among the recorded ones); one at
    a recorded path with other bytes is refused saying that the file changed; one inside
    ``run_dir`` is refused (a run folder is data).
    """
    matched, sources = [], []
    for entry in named:
        plugin = read_plugin(entry)
        if run_dir is not None and inside(plugin.file, run_dir):
            raise ConfigError(f"--plugins {shown(entry, 200)}: {shown(str(plugin.file), 200)} lies inside the run "
                              "folder, and nothing inside a run folder is ever run (a run folder is data); name "
                              "your own copy of the plugin, outside the folder")
        if plugin.sha256 in record.sha256:
            matched.append(record.sha256.index(plugin.sha256))
            sources.append(plugin)
            continue
        if str(plugin.file) in record.files:
            recorded = record.sha256[record.files.index(str(plugin.file))]
            raise ConfigError(f"--plugins {shown(entry, 200)}: {shown(str(plugin.file), 200)} changed since the run "
                              f"recorded it (sha256 {plugin.sha256}, recorded {recorded}); restore it, or start a "
                              "new run")
        recorded = record.describe() or "none"
        raise ConfigError(f"--plugins {shown(entry, 200)}: {shown(str(plugin.file), 200)} (sha256 {plugin.sha256}) "
                          f"is not one of the run's plugins; the run records: {recorded}")
    for plugin in sources:
        execute(plugin)
    return matched


def needs_plugins_message(error: Exception, record: PluginRecord, unnamed: Sequence[int], command: str,
                          run_dir=None) -> str:
    """The line for a run that needs a plugin the user did not name: what it needs (the
    unknown name in ``error``), the recorded files and hashes, and the command that opens it."""
    files, command = [record.files[i] for i in unnamed], as_typed(command)
    listed = ", ".join(f"{shown(record.files[i], 200)} (sha256 {record.sha256[i]})" for i in unnamed)
    if run_dir is not None and any(inside(f, run_dir) for f in files):
        return (f"the run needs a plugin that was not named: {error}; the run records {listed}, inside the run "
                "folder itself, which is never run from (a run folder is data): read that copy, and if you trust "
                f"it, name your own copy outside the folder: {command.replace('{plugins}', '--plugins YOUR_COPY.py')}"
                .replace("{plugin_list}", "['YOUR_COPY.py']"))
    flags = " ".join(f"--plugins {shell_word(f)}" for f in files)
    return (f"the run needs a plugin that was not named: {error}; the run was made with {listed}; to open it "
            f"with that plugin, which runs the file's code: "
            f"{command.replace('{plugins}', flags).replace('{plugin_list}', repr(files))}")
