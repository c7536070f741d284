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
  :data:`INDEX_BYTES_PER_POINT` bytes a point) must fit before any permutation is drawn.
"""

import math

from pyrovae.devices import available_bytes, format_bytes
from pyrovae.errors import DataError

#: the largest share of the available memory one decoded chunk of a streamed array may take
CHUNK_SHARE = 0.25
#: bytes a point costs in index structures: an int64 permutation, its two parts and an index map
INDEX_BYTES_PER_POINT = 24


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
