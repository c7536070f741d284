"""Sizes before bytes: what a data file declares is checked against the memory budget before
anything is decoded or allocated.

A file's header is a promise, not a size: a 1 MB compressed zarr chunk or ``.npz`` entry can
inflate to gigabytes, and an HDF5 dataset can declare 10^10 rows it does not hold. Each reader
computes what it is about to allocate from the declared shapes and dtypes and calls
:func:`check_fits` first, so a hostile or mistaken file is one line, never an allocation that
takes the machine down:

- a whole array read into memory (an ``.npz`` entry, labels, a sparse matrix's offsets, a CSV
  table as it grows) must fit :func:`~pyrovae.devices.available_bytes`;
- one decoded chunk of a streamed array (zarr, HDF5) at most :data:`CHUNK_SHARE` of it, since a
  read decodes whole chunks and reader processes may decode at once;
- the index of a data set's points (the held-out permutations, each epoch's order: about
  :data:`INDEX_BYTES_PER_POINT` bytes a point) must fit before any permutation is drawn;
- a streamed array (HDF5, zarr, a sparse matrix) may declare at most :data:`MAX_EXPANSION`
  times the bytes its file holds for it: beyond that it is a decompression bomb, or a file that
  declares rows it does not hold, and every sweep over it (checks, fingerprint, epochs) would
  take time for bytes that are not there.
"""

import math

from pyrovae.devices import available_bytes, format_bytes
from pyrovae.errors import DataError

#: the largest share of the available memory one decoded chunk of a streamed array may take
CHUNK_SHARE = 0.25
#: bytes a point costs in index structures: an int64 permutation, its two parts and an index map
INDEX_BYTES_PER_POINT = 24
#: how many times the bytes it holds a streamed array may declare (compressed images: ~5-50; sparse counts: ~10)
MAX_EXPANSION = 1000
#: stored arrays smaller than this (as declared) are never refused for their expansion
EXPANSION_FLOOR = 64 << 20


def declared_bytes(shape, itemsize: int) -> int:
    """Bytes of an array of ``shape`` (as declared) and ``itemsize``: exact integers, no overflow."""
    return math.prod(int(s) for s in shape) * int(itemsize)


def check_fits(nbytes: int, where: str, what: str, share: float = 1.0) -> None:
    """``nbytes`` (what is about to be allocated: ``what``) fit ``share`` of the memory this
    process may still use; else one DataError line naming ``where``."""
    room = int(available_bytes("cpu") * share)
    if nbytes > room:
        limit = "" if share == 1.0 else f" ({share:g} of it for one chunk)"
        raise DataError(f"{where}: {what} takes {format_bytes(nbytes)} once decoded, more than the "
                        f"{format_bytes(room)} this process may still use{limit}; nothing was read")


def check_index_fits(n: int, where: str) -> None:
    """The index structures of ``n`` points fit in memory (before any permutation of them is drawn)."""
    check_fits(n * INDEX_BYTES_PER_POINT, where, f"the index of its {n} points (as declared)")


def check_expansion(declared: int, stored: int, where: str) -> None:
    """An array that declares ``declared`` bytes (in its stored dtype) while its file holds ``stored``
    for it may expand at most :data:`MAX_EXPANSION` times (small arrays, up to
    :data:`EXPANSION_FLOOR`, always pass); else one DataError line."""
    if declared > EXPANSION_FLOOR and declared > MAX_EXPANSION * max(stored, 1):
        raise DataError(f"{where}: declares {format_bytes(declared)} of values but holds {format_bytes(stored)}, more "
                        f"than {MAX_EXPANSION} times as much (a decompression bomb, or rows it does not hold); "
                        "nothing was read")
