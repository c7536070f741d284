"""Run folders: created exclusively, written by one process at a time, never left half-written.

A run folder is what ``pyrovae train`` fills (``config.toml``, ``checkpoint.pt``,
``metrics.jsonl``, figures) and what ``evaluate``, ``sample`` and :func:`pyrovae.load` open.
This module holds the rules that keep it trustworthy:

- **Exclusive creation.** :func:`create_run_dir` makes the folder with one ``mkdir`` that
  fails if it exists; a default name that is taken gets a suffix (``-2``, ``-3``, ...), so runs
  started together land in separate folders.
- **One writer.** :class:`RunLock` holds an exclusive ``flock`` on the run folder itself (its
  directory, opened with ``O_DIRECTORY``) for as long as a process writes it (``train``,
  ``--resume``, ``evaluate``); a second writer is refused with one line. No file can be deleted
  to side-step it; ``RUN_DIR/.lock`` only holds the writer's pid, for that message.
- **Atomic files.** :func:`atomic_write_bytes` writes a temporary file beside the target,
  fsyncs it and renames it over the target: a reader sees the old file or the new one, never
  a torn one, and a symbolic link planted under the target's name is replaced, not followed.
  Temporaries left by a killed writer are removed by the next writer (:func:`remove_stale`).
- **Write failures** (a full disk, a read-only folder) become one :class:`RunDirError` line
  that says what was kept.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

from pyrovae.errors import RunDirError
from pyrovae.training.records import EpochRecord

CHECKPOINT = "checkpoint.pt"
#: the best epoch's checkpoint (train.early_stopping's metric, or the validation ELBO)
BEST = "best.pt"
#: ``evaluate --which best`` writes here by default
EVALUATION_BEST = "evaluation_best.json"
CONFIG = "config.toml"
METRICS = "metrics.jsonl"
EVALUATION = "evaluation.json"
LOCK = ".lock"
#: the MLflow run a run logs to (log.mlflow): its tracking URI and run id
MLFLOW = "mlflow.json"
PLUGINS = "plugins"
TMP_SUFFIX = ".tmp"

try:  # POSIX; elsewhere the lock is a no-op, as docs/run-folders.md says
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def describe_os_error(e: OSError) -> str:
    """``'No space left on device'`` and the like: the reason without the errno noise."""
    return e.strerror or type(e).__name__


def atomic_write_bytes(path, write: Callable, what: str = "") -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    An ``OSError`` (disk full, read-only folder) removes the temporary file and becomes a
    :class:`RunDirError` naming ``path``; ``what`` says what was kept (appended to the message).
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide the run from its readers
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as e:
        raise RunDirError(f"{path}: cannot write ({describe_os_error(e)}){what}") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale(run_dir) -> List[str]:
    """Remove the temporary files a killed writer left (``.NAME.XXXX.tmp``); returns their names.

    Only call it while holding the folder's :class:`RunLock`: then no other writer is mid-write.
    """
    removed = []
    for p in Path(run_dir).iterdir():
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and not p.is_dir():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def is_fresh(run_dir) -> bool:
    """Whether a folder holds nothing of a run: no entries but the lock file and stale temporaries."""
    return all(p.name == LOCK or (p.name.startswith(".") and p.name.endswith(TMP_SUFFIX))
               for p in Path(run_dir).iterdir())


def check_fresh(path) -> None:
    """Refuse (one line) an existing path that is not a fresh folder: a run never overwrites one."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or not is_fresh(path)):
        raise RunDirError(f"{path}: already exists and is not empty; use --resume to continue it, or another --out")


def create_run_dir(path=None, default: Optional[str] = None) -> Path:
    """Create a run folder exclusively and return it.

    ``path`` given: create it (and missing parents); an existing folder is taken only if it is
    fresh (:func:`is_fresh`), and only by the process that then holds its lock (the caller
    locks it next and checks again). ``path`` None: ``default`` (e.g. ``runs/digits-20261121-101500``),
    or ``default-2``, ``default-3``, ... if that is taken: each attempt is one ``mkdir`` that
    fails if the folder exists, so two runs never pick the same folder.
    """
    if path is not None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{path}: cannot create the run folder ({describe_os_error(e)} at "
                              f"{path.parent})") from None
        try:
            path.mkdir()
        except FileExistsError:
            check_fresh(path)
        except OSError as e:
            raise RunDirError(f"{path}: cannot create the run folder ({describe_os_error(e)})") from None
        return path
    base = Path(default)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"{base.parent}: cannot create the folder for runs ({describe_os_error(e)}); "
                          "choose another with --out") from None
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise RunDirError(f"{candidate}: cannot create the run folder ({describe_os_error(e)}); "
                              "choose another with --out") from None
    raise RunDirError(f"{base}: too many run folders of this name; choose one with --out")


class RunLock:
    """An exclusive lock on a run folder, held while one process writes it.

    ``flock`` on the folder's own directory (opened with ``O_DIRECTORY``), taken without
    waiting: if another process holds it, :class:`RunDirError` names the folder and, from
    ``RUN_DIR/.lock``, that process's pid. Deleting ``.lock`` does not release anything: the lock
    is on the directory. The operating system releases it when the process ends, however it
    ends, so a killed run never leaves its folder locked.
    """

    def __init__(self, run_dir, purpose: str = "write"):
        self.run_dir = Path(run_dir)
        self.purpose = purpose
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.run_dir, flags)
        except OSError as e:
            raise RunDirError(f"{self.run_dir}: cannot {self.purpose} this run folder "
                              f"({describe_os_error(e)})") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunDirError(f"{self.run_dir}: another pyrovae process{_read_pid(self.run_dir)} is writing this "
                                  "run folder; one writer per run folder: wait for it, or use another --out") from None
        self.fd = fd
        _write_pid(self.run_dir)
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def _write_pid(run_dir: Path) -> None:
    """``RUN_DIR/.lock``: the writer's pid, for the message a second writer gets (not the lock)."""
    try:
        atomic_write_bytes(run_dir / LOCK, lambda f: f.write(f"{os.getpid()}\n".encode()))
    except RunDirError:
        pass  # a read-only folder still takes the lock; the pid is only for a message


def _read_pid(run_dir: Path) -> str:
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        try:
            text = os.read(fd, 32).decode(errors="replace").strip()
        finally:
            os.close(fd)
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


# -- metrics.jsonl -------------------------------------------------------------------------
def write_metrics(run_dir, records: Iterable[Dict]) -> None:
    """Replace ``metrics.jsonl`` atomically with these records, one JSON object per line."""
    text = "".join(json.dumps(r) + "\n" for r in records).encode()
    atomic_write_bytes(Path(run_dir) / METRICS, lambda f: f.write(text))


def read_metrics(run_dir) -> List[Dict]:
    """The epoch records of ``metrics.jsonl`` (read as data, :class:`~pyrovae.training.records.EpochRecord`'s
    schema, earlier key names renamed): a torn or foreign line left out; none where the file is missing."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if EpochRecord.problem(record) is None:
            records.append(EpochRecord.current(record))
    return records


def append_metrics(run_dir, record: Dict, kept: str = "") -> None:
    """Append one record to ``metrics.jsonl`` (never through a symbolic link).

    A write failure is one :class:`RunDirError` line; a torn last line is repaired by the next
    ``--resume``, which rewrites the file from the checkpoint's records.
    """
    path = Path(run_dir) / METRICS
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    line = (json.dumps(record) + "\n").encode()
    try:
        fd = os.open(path, flags, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as e:
        raise RunDirError(f"{path}: cannot write ({describe_os_error(e)}){kept}") from None


def copy_plugins(sources, run_dir) -> None:
    """Keep a copy of each plugin in ``RUN_DIR/plugins/``, for reading (never run from there):
    ``sources`` are (file name, the bytes that ran) pairs; names that repeat get a ``N-`` prefix."""
    sources = list(sources)
    if not sources:
        return
    folder = Path(run_dir) / PLUGINS
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:
        raise RunDirError(f"{folder}: cannot create ({describe_os_error(e)})") from None
    seen = set()
    for i, (name, data) in enumerate(sources):
        target = name if name not in seen else f"{i}-{name}"
        seen.add(name)
        atomic_write_bytes(folder / target, lambda f: f.write(data))


#: the figures a run draws at its end (those its data allow)
FIGURES = SAMPLES_PNG, RECONSTRUCTIONS_PNG, ELBO_PNG, MANIFOLD_PNG, LATENT_PNG = (
    "samples.png", "reconstructions.png", "elbo.png", "manifold.png", "latent.png")
#: the names of what pyrovae writes in a run folder (``evaluate --out`` may write none of them)
OWN_FILES = (CHECKPOINT, BEST, CONFIG, METRICS, LOCK, MLFLOW, *FIGURES)


def own_file_problem(out, run_dir, suffix: str = ".json", default: str = EVALUATION) -> Optional[str]:
    """Why ``out`` may not be written by ``evaluate --out`` (or ``sample --out``, ``suffix``
    ``.png``) (None if it may): inside the run folder only new ``*.json`` (``*.png``) files directly
    in it that are not among its own files; never a file in one of its folders (``plugins/``,
    ``tensorboard/``)."""
    out, run_dir = Path(out), Path(run_dir)
    try:
        where = out.parent.resolve() / out.name
        relative = where.relative_to(run_dir.resolve())
    except (ValueError, OSError):
        return None
    if len(relative.parts) != 1:
        return f"{out} lies in a folder of the run ({relative.parts[0]}/), which holds the run's own files"
    if relative.name in OWN_FILES or relative.name.startswith(".") or relative.suffix.lower() != suffix:
        return (f"{out} is one of the run's own files or names; inside the run folder --out writes a new "
                f"{suffix} file{f' (default {default})' if default else ''}")
    return None


def checked_output(out, run_dir, suffix: str, default: str = "", required: bool = True) -> Path:
    """A command's ``--out`` beside (or in) a run folder, checked before any work: a ``suffix`` file
    (where ``required``), not one of the run's own files or folders (:func:`own_file_problem`),
    in a folder where a file can be created (a run folder that does not exist is left to the
    command that opens it to name); each refusal one line."""
    out = Path(out)
    if required and out.suffix.lower() != suffix:
        raise RunDirError(f"--out {out}: must be a {suffix} file")
    problem = own_file_problem(out, run_dir, suffix, default)
    if problem:
        raise RunDirError(f"--out {problem}")
    into_run = out.parent.resolve() == Path(run_dir).resolve()
    if not into_run or Path(run_dir).is_dir():
        check_writable(out.parent, "" if into_run else "--out ")
    return out


def check_writable(folder, flag: str = "") -> None:
    """Fail now, in one line, if no file can be created in ``folder`` (rather than after the work)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunDirError(f"{flag}{folder}: no such folder")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".pyrovae-write-test.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RunDirError(f"{flag}{folder}: cannot write there ({describe_os_error(e)})") from None


