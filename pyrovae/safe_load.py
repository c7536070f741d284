"""Reading a ``torch.save`` file that may be hostile: nothing runs, nothing expands.

- The file is opened once; its zip archive is checked through that descriptor and the same
  file is then read by ``torch.load`` (through ``/proc/self/fd`` where there is one), so a file
  swapped between the check and the load is never the one loaded.
- Every entry of the archive must be stored uncompressed, as ``torch.save`` writes them: a
  deflated entry can expand to far more than the file's size (2 GB of zeros fit in 2 MB), and
  would be allocated before any check could see it.
- ``torch.load(..., weights_only=True, mmap=True)``: PyTorch's restricted unpickler, which builds
  tensors and plain containers only (a pickle payload cannot run code), with every tensor left
  in the file, mapped, until the caller has checked it and copies what it keeps.
"""

import os
import stat
import warnings
import zipfile

import torch


class UnsafeFile(Exception):
    """A torch file that is refused unread (its reason is the message)."""


def archive_problem(file, size: int):
    """What is wrong with a zip archive before any of it is read (None if nothing)."""
    try:
        with zipfile.ZipFile(file) as archive:
            for info in archive.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    return (f"entry {info.filename!r} is compressed; torch.save writes every entry uncompressed, "
                            "and a compressed entry can expand far beyond the file's size")
                if info.file_size > size:
                    return f"entry {info.filename!r} claims {info.file_size} bytes in a file of {size}"
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, RuntimeError) as e:
        return f"not a readable zip archive ({type(e).__name__})"
    return None


def load_torch_file(path):
    """``torch.load`` of a file that may be hostile (see the module docstring).

    Raises :class:`UnsafeFile` for a file refused unread, and whatever ``torch.load`` raises for
    one it cannot read (a pickle that needs a Python object names it in its message).
    """
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile("not a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            zipped = zipfile.is_zipfile(f)
            f.seek(0)
            problem = archive_problem(f, info.st_size) if zipped else None
        if problem:
            raise UnsafeFile(problem)
        same_file = f"/proc/self/fd/{fd}"
        source = same_file if os.path.exists(same_file) else path
        with warnings.catch_warnings():  # torch warns that it checks sparse tensors
            warnings.simplefilter("ignore")
            return torch.load(source, map_location="cpu", weights_only=True, mmap=zipped)
    finally:
        os.close(fd)
