"""Opening a data path that may be hostile: a data file reads only itself, and nothing blocks.

Every path pyrovae reads data from is a regular file or a folder. A FIFO, a character device
(``/dev/zero``), a socket or a block device given as ``.npy``, ``.csv``, an image or a ``.mat``
file would block a read forever or never end; a symbolic link out of an image folder or a zarr
store would read a file the user did not name. So:

- :func:`open_regular` opens with ``O_NONBLOCK`` (an open of a FIFO returns at once instead of
  waiting for a writer) and checks the *opened* descriptor with ``fstat``: a path swapped for a
  FIFO after any earlier check is still refused, because the check is on what was opened.
- :func:`reopen_path` names that same descriptor for a library that opens by path (h5py), through
  ``/proc/self/fd`` where there is one, so the library opens the file that was checked.
- :func:`check_folder` walks a folder (a zarr store) before a library reads it: every entry is a
  regular file or a folder, and every symbolic link stays inside it.
"""

import os
import stat
from pathlib import Path
from typing import BinaryIO

from pyrovae.errors import DataError, one_line, shown

#: what a path that is not a regular file is, by its ``st_mode`` (for messages)
KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def kind_of(mode: int) -> str:
    """What a file of ``st_mode`` is, in words."""
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def open_fd(path, where: str, follow: bool = True) -> int:
    """A descriptor of the regular file ``path``, opened so that the open cannot block (see the
    module docstring); anything else is one DataError line that names ``where`` and what it is.
    ``follow = False``: a symbolic link itself is refused (``O_NOFOLLOW``)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:  # a socket (ENXIO), a link refused by O_NOFOLLOW (ELOOP), no access, ...
        raise DataError(f"{where}: cannot open {shown(str(path))} ({one_line(e.strerror or type(e).__name__, 80)}); "
                        "a data path is a regular file or a folder") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"{where}: {shown(str(path))} is {kind_of(info.st_mode)}; a data path is a regular file "
                            "or a folder")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path, where: str, follow: bool = True) -> BinaryIO:
    """:func:`open_fd` as a binary file object (closing it closes the descriptor)."""
    return os.fdopen(open_fd(path, where, follow), "rb")


def reopen_path(fd: int, path) -> str:
    """A path that opens the file of descriptor ``fd`` (the one that was checked): ``/proc/self/fd/N``
    where the system has it, else ``path`` itself."""
    same = f"/proc/self/fd/{fd}"
    return same if os.path.exists(same) else str(path)


def check_regular_files(paths, where: str) -> None:
    """Each existing path of ``paths`` is a regular file (checked without following it into a block)."""
    for path in paths:
        if os.path.lexists(path):
            os.close(open_fd(path, where))


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, resolved (every symbolic link followed), lies under ``root`` (resolved)."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def check_folder(folder, where: str) -> None:
    """Every entry under ``folder`` is a regular file or a folder, and every symbolic link in it
    resolves inside it; anything else is one DataError line naming the entry."""
    root = Path(folder).resolve()
    for parent, folders, files in os.walk(root):
        for name in folders + files:
            entry = Path(parent) / name
            if entry.is_symlink() and not inside(entry, root):
                raise DataError(f"{where}: {shown(str(entry.relative_to(root)))} is a symbolic link out of the folder "
                                f"(to {shown(os.readlink(entry))}); a data folder reads only what is inside it")
            mode = entry.stat().st_mode if entry.exists() else 0
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                what = kind_of(mode) if mode else "a broken symbolic link"
                raise DataError(f"{where}: {shown(str(entry.relative_to(root)))} is {what}; a data folder holds "
                                "regular files and folders")
