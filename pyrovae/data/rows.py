"""Stored points: N rows of one shape, read by index in the dtype they are stored in.

A :class:`Rows` is what a file or a data set holds, before any conversion: a ``.npy`` file read
by offset (never mapped whole, so that what was read leaves no resident pages behind), an HDF5
or zarr array, the rows of a compressed sparse row (CSR) matrix made dense a batch at a time,
a tensor in memory, or a user's map-style torch ``Dataset``. :class:`pyrovae.data.splits.Split`
turns rows into float32 points; nothing past it sees a file.

Every reader takes sorted, unique indices (``numpy`` int64): a batch is read in the order of
the file, which is what disks, page caches and chunked formats are fast at, and the split puts
the rows back in the batch's order.
"""

import math
import os
from typing import Optional, Sequence

import numpy as np
import torch

from pyrovae.data.budget import CHUNK_SHARE, check_expansion, check_fits, declared_bytes
from pyrovae.data.regular import open_fd, open_regular, reopen_path
from pyrovae.errors import DataError, one_line

#: numpy dtypes (by kind) a data file may store points in
NUMERIC_KINDS = "biuf"


def torch_dtype(dtype: np.dtype, where: str) -> torch.dtype:
    """The torch dtype of a stored numpy dtype; anything but numbers is one line."""
    dtype = np.dtype(dtype)
    if dtype.kind not in NUMERIC_KINDS or dtype.itemsize > 8 or dtype == np.uint64 or dtype.kind == "f" \
            and dtype.itemsize < 2:
        raise DataError(f"{where}: expected a numeric array, got dtype {dtype}")
    return torch.from_numpy(np.zeros(0, dtype.newbyteorder("="))).dtype


class Rows:
    """N stored rows of ``row_shape``, read by sorted unique indices (see the module docstring).

    :param str where: what to name in a message (``data.path = '...'``).
    """

    where: str = "data"
    row_shape: tuple = ()
    #: the stored dtype, as torch's (uint8 stays uint8 up to the device)
    dtype: torch.dtype = torch.float32

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, index: np.ndarray) -> torch.Tensor:
        """The rows at ``index`` (sorted, unique int64) as a CPU tensor ``(len(index), *row_shape)``."""
        raise NotImplementedError

    def range(self, start: int, stop: int) -> torch.Tensor:
        """The rows ``start .. stop - 1`` (what a sweep reads)."""
        return self.take(np.arange(start, stop, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of all the rows in their stored dtype."""
        return len(self) * int(np.prod(self.row_shape)) * torch.empty(0, dtype=self.dtype).element_size()


def _checked_shape(shape: Sequence[int], where: str) -> tuple:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise DataError(f"{where}: expected an array of shape (N, ...) with one row per point, got shape {shape}")
    if math.prod(shape[1:]) == 0:
        raise DataError(f"{where}: data points of shape {shape[1:]} hold no values")
    check_fits(math.prod(shape[1:]) * 4, where, f"one point of shape {shape[1:]} as float32", CHUNK_SHARE)
    return shape


class TensorRows(Rows):
    """Rows of a tensor in memory, in any numeric dtype."""

    def __init__(self, tensor: torch.Tensor, where: str = "data"):
        self.where = where
        shape = _checked_shape(tensor.shape, where)
        if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in (
                torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
            raise DataError(f"{where}: expected a numeric array, got dtype {tensor.dtype}")
        self.tensor, self.row_shape, self.dtype = tensor.detach().cpu().contiguous(), shape[1:], tensor.dtype

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def take(self, index: np.ndarray) -> torch.Tensor:
        return self.tensor.index_select(0, torch.from_numpy(index))

    def range(self, start: int, stop: int) -> torch.Tensor:
        return self.tensor[start:stop]


class NpyRows(Rows):
    """The rows of a ``.npy`` file, read with ``pread`` at their offsets (a contiguous range in one
    read). Nothing is mapped: pages of a mapped file that were read stay in the process's
    resident memory (64 KiB at a time, with the kernel's fault-around), which would grow with
    the file; read this way they stay in the page cache only. The file is opened once per
    process (a DataLoader worker opens its own), each time without blocking and checked to be the
    regular file first opened (:mod:`pyrovae.data.regular`)."""

    def __init__(self, path, where: str):
        self.path, self.where = str(path), where
        self._fd, self._pid = None, None
        with open_regular(self.path, where) as f:  # a FIFO or a device is refused, never read
            self.identity = _identity(os.fstat(f.fileno()))
            try:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ValueError(f"format version {version} (structured arrays): a data file holds numbers")
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f, max_header_size=1 << 20)
            except (ValueError, OSError, SyntaxError) as e:
                raise DataError(f"{where}: not a .npy file ({one_line(str(e), 120)})") from None
            self.offset = f.tell()
        if dtype.hasobject:
            raise DataError(f"{where}: holds Python objects (dtype {dtype}); a data file holds numbers")
        self.dtype = torch_dtype(dtype, where)
        self.stored, self.shape = dtype, _checked_shape(shape, where)
        self.n, self.row_shape = self.shape[0], self.shape[1:]
        self.row_bytes = math.prod(self.row_shape) * dtype.itemsize
        size = os.fstat(self._file()).st_size
        if size < self.offset + self.n * self.row_bytes:
            raise DataError(f"{where}: truncated: its header promises {self.shape} values of {dtype.itemsize} bytes, "
                            f"the file holds {size - self.offset} bytes of data")
        # column-major (rare): a row is strided across the file; numpy reads it from a map
        self._columns = None
        if fortran and len(self.shape) > 1:  # the checked file, mapped through its descriptor's path
            self._columns = np.lib.format.open_memmap(reopen_path(self._file(), self.path), mode="r")

    def __getstate__(self):  # a DataLoader worker started by spawn opens the file itself
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __len__(self) -> int:
        return self.n

    def _file(self) -> int:
        """This process's descriptor of the file, opened so that it cannot block, and checked to be
        the file that was read first (a path swapped for another file or a FIFO is refused)."""
        if self._fd is None or self._pid != os.getpid():
            fd = open_fd(self.path, self.where)
            if _identity(os.fstat(fd)) != self.identity:
                os.close(fd)
                raise DataError(f"{self.where}: the file was replaced while it was read")
            self._fd, self._pid = fd, os.getpid()
        return self._fd

    def _read(self, spans, count: int) -> torch.Tensor:
        """``count`` rows read into one buffer, straight from the file: ``spans`` gives, for each
        read, (first row in the file, rows). No bytes object per read and no joined copy: a
        sweep allocates one buffer per chunk."""
        out = np.empty((count, *self.row_shape), dtype=self.stored)
        view, fd, size, at = memoryview(out.reshape(-1).view(np.uint8)), self._file(), self.row_bytes, 0
        for first, rows in spans:
            end = at + rows * size
            if _pread_into(fd, view[at:end], self.offset + first * size) != rows * size:
                raise DataError(f"{self.where}: the file shrank while it was read")
            at = end
        return self._native(out)

    def _native(self, values: np.ndarray) -> torch.Tensor:
        if not self.stored.isnative:  # e.g. big-endian '>f4' from another machine: converted, not refused
            values = values.astype(self.stored.newbyteorder("="))
        return torch.from_numpy(values)

    def take(self, index: np.ndarray) -> torch.Tensor:
        if self._columns is not None:
            return torch.from_numpy(np.array(self._columns[index]).astype(self.stored.newbyteorder("=")))
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        if len(breaks) + 1 < len(index):  # runs of consecutive rows (a sweep): one read each
            return self._read([(int(run[0]), len(run)) for run in np.split(index, breaks)], len(index))
        # scattered rows (a minibatch): one pread a row, joined (a minibatch is small; this is the
        # fastest way from Python, ~2 us a row)
        fd, size, start = self._file(), self.row_bytes, self.offset
        data = b"".join([os.pread(fd, size, start + i * size) for i in index.tolist()])
        if len(data) != len(index) * size:
            raise DataError(f"{self.where}: the file shrank while it was read")
        return self._native(np.frombuffer(bytearray(data), dtype=self.stored).reshape(len(index), *self.row_shape))

    def range(self, start: int, stop: int) -> torch.Tensor:
        if self._columns is not None:
            return self.take(np.arange(start, stop, dtype=np.int64))
        return self._read([(start, stop - start)], stop - start)


def _identity(info: os.stat_result) -> tuple:
    """What tells one file from another: its device and inode."""
    return info.st_dev, info.st_ino


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Read ``len(view)`` bytes of a file at ``offset`` into ``view`` (``preadv``; ``pread`` where
    there is none); the bytes read, fewer only at the end of the file."""
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [view[done:]], offset + done)
        else:
            data = os.pread(fd, len(view) - done, offset + done)
            view[done:done + len(data)] = data
            got = len(data)
        if got == 0:
            break
        done += got
    return done


class ArrayRows(Rows):
    """Rows of an array that reads by index arrays: an h5py ``Dataset`` (chunked HDF5, read a
    chunk at a time by the library), a zarr array (``oindex``), or a numpy array."""

    def __init__(self, array, where: str):
        self.array, self.where = array, where
        shape = _checked_shape(array.shape, where)
        self.n, self.row_shape = shape[0], shape[1:]
        self.stored = np.dtype(array.dtype)
        self.dtype = torch_dtype(self.stored, where)
        self._oindex = hasattr(array, "oindex") and not isinstance(array, np.ndarray)

    def __len__(self) -> int:
        return self.n

    def _convert(self, values) -> torch.Tensor:
        values = np.asarray(values)
        if not values.dtype.isnative:
            values = values.astype(values.dtype.newbyteorder("="))
        return torch.from_numpy(np.ascontiguousarray(values))

    def take(self, index: np.ndarray) -> torch.Tensor:
        if len(index) == 0:
            return torch.empty((0, *self.row_shape), dtype=self.dtype)
        if self._oindex:
            return self._convert(self.array.oindex[index])
        return self._convert(self.array[index])

    def range(self, start: int, stop: int) -> torch.Tensor:
        return self._convert(self.array[start:stop])


class CsrRows(Rows):
    """The rows of a compressed sparse row matrix ``(N, D)``, made dense a batch at a time
    (never the whole matrix). ``data`` and ``indices`` may be on disk (HDF5 datasets of an
    ``.h5ad`` file); ``indptr`` (N + 1 offsets) is read into memory once."""

    def __init__(self, data, indices, indptr, shape, where: str, row_shape: Optional[tuple] = None):
        self.data, self.indices, self.where = data, indices, where
        self.n, width = int(shape[0]), int(shape[1])
        if len(getattr(indptr, "shape", (0,))) != 1 or int(indptr.shape[0]) != self.n + 1:
            raise DataError(f"{where}: a malformed sparse matrix: its row offsets (indptr) do not describe "
                            f"{self.n} rows")
        check_fits(declared_bytes(indptr.shape, 8), where, "the sparse matrix's row offsets (indptr)")
        self.indptr = np.asarray(indptr[:], dtype=np.int64)
        self.width = width
        self.row_shape = tuple(row_shape) if row_shape else (width,)
        _checked_shape((self.n, *self.row_shape), where)
        if len(self.indptr) != self.n + 1 or (self.n and (self.indptr[0] != 0 or np.any(np.diff(self.indptr) < 0))):
            raise DataError(f"{where}: a malformed sparse matrix: its row offsets (indptr) do not describe "
                            f"{self.n} rows")
        if self.indptr[-1] > len(data) or len(indices) != len(data):
            raise DataError(f"{where}: a malformed sparse matrix: {len(data)} values, {len(indices)} column "
                            f"indices, {int(self.indptr[-1])} promised by its row offsets")
        self.stored = np.dtype(data.dtype)
        self.dtype = torch_dtype(self.stored, where)
        held = len(data) * (self.stored.itemsize + np.dtype(indices.dtype).itemsize) + self.indptr.nbytes
        check_expansion(declared_bytes((self.n, width), self.stored.itemsize), held, f"{where}: the sparse matrix")

    def __len__(self) -> int:
        return self.n

    def take(self, index: np.ndarray) -> torch.Tensor:
        out = np.zeros((len(index), self.width), dtype=self.stored.newbyteorder("="))
        starts, stops = self.indptr[index], self.indptr[index + 1]
        for row, (a, b) in enumerate(zip(starts.tolist(), stops.tolist())):
            if b > a:
                cols = np.asarray(self.indices[a:b], dtype=np.int64)
                if cols.min() < 0 or cols.max() >= self.width:
                    raise DataError(f"{self.where}: a malformed sparse matrix: row {int(index[row])} has a column "
                                    f"index outside [0, {self.width})")
                out[row, cols] = self.data[a:b]
        return torch.from_numpy(out).reshape(len(index), *self.row_shape)

    def range(self, start: int, stop: int) -> torch.Tensor:
        a, b = int(self.indptr[start]), int(self.indptr[stop])
        out = np.zeros((stop - start, self.width), dtype=self.stored.newbyteorder("="))
        if b > a:
            cols = np.asarray(self.indices[a:b], dtype=np.int64)
            if cols.min() < 0 or cols.max() >= self.width:
                raise DataError(f"{self.where}: a malformed sparse matrix: a column index outside [0, {self.width})")
            rows = np.repeat(np.arange(stop - start), np.diff(self.indptr[start:stop + 1]))
            out[rows, cols] = self.data[a:b]
        return torch.from_numpy(out).reshape(stop - start, *self.row_shape)


class DatasetRows(Rows):
    """The points of a user's map-style torch ``Dataset`` whose items are ``x`` or ``(x, y)``: a
    batch is its items, stacked (``DataLoader`` workers call it in parallel)."""

    def __init__(self, dataset, where: str):
        self.dataset, self.where = dataset, where
        self.n = len(dataset)
        if self.n == 0:
            raise DataError(f"{where}: the Dataset is empty")
        first = dataset[0]
        self.labelled = isinstance(first, (tuple, list))
        if self.labelled and len(first) != 2:
            raise DataError(f"{where}: items must be x or (x, y); got a {type(first).__name__} of {len(first)}")
        x0 = self._point(first, 0)
        self.row_shape, self.dtype = tuple(x0.shape), x0.dtype
        _checked_shape((self.n, *self.row_shape), where)

    def _point(self, item, i) -> torch.Tensor:
        x = item[0] if self.labelled else item
        try:
            x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise DataError(f"{self.where}: item {i} cannot be read as an array ({type(e).__name__}: "
                            f"{one_line(str(e), 120)})") from None
        return x

    def __len__(self) -> int:
        return self.n

    def take(self, index: np.ndarray) -> torch.Tensor:
        points = []
        for i in index.tolist():
            x = self._point(self.dataset[i], i)
            if tuple(x.shape) != self.row_shape:
                raise DataError(f"{self.where}: item {i} has shape {tuple(x.shape)}, item 0 {self.row_shape}; every "
                                "item must be x, or (x, y), of one shape")
            points.append(x)
        return torch.stack(points).to(self.dtype) if points else torch.empty((0, *self.row_shape), dtype=self.dtype)

    def labels(self) -> Optional[torch.Tensor]:
        """The items' labels, from the data set's ``targets`` where it has them (torchvision's
        sets), else read item by item (the points are read and dropped)."""
        if not self.labelled:
            return None
        targets = getattr(self.dataset, "targets", None)
        if targets is not None and len(targets) == self.n:
            return torch.as_tensor(np.asarray(targets))
        return torch.as_tensor(np.asarray([_label(self.dataset[i][1], i, self.where) for i in range(self.n)]))


def _label(y, i: int, where: str):
    try:
        return np.asarray(y).item()
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: item {i}'s label is not one number ({type(e).__name__})") from None
