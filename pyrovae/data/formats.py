"""A user's data file or folder (``data.name = "file"``), read by its extension into :class:`~pyrovae.data.rows.Rows`.

=============================  ==========================================================  ==========
``data.path``                  what is read                                                 streamed
=============================  ==========================================================  ==========
``.npy``                       one array ``(N, ...)``                                       yes (by offset)
``.npz``                       arrays (below), or a SciPy sparse matrix (``save_npz``)      no (in memory, stored dtype)
``.pt``                        a tensor, or a dict of them (read without unpickling code)   no
``.h5`` / ``.hdf5``            datasets (below)                                             yes (HDF5 chunks)
``.h5ad``                      AnnData: ``X`` (dense or CSR) or ``layers/<key>``, labels    yes
                               from ``obs/<label_key>`` (categorical codes or numbers)
``.zarr``                      an array, or a group of arrays (below)                       yes (zarr chunks)
``.csv``                       numeric columns, one row per point; a header is allowed      no
a folder                       PNG or JPEG images; class subfolders give labels             yes (an image per read)
=============================  ==========================================================  ==========

In a file that holds several arrays: one array (and its labels ``y``), or ``train`` and
``test`` (and ``train_y``, ``test_y``); ``data.key`` names the points' array (in an ``.h5ad``
file a layer; in a CSV file nothing) and ``data.label_key`` the labels' (in a CSV file a
column of the header; in an ``.h5ad`` file a column of ``obs``). HDF5, AnnData, zarr and image
folders need the optional extra ``pip install "pyrovae[formats]"`` (h5py, zarr, Pillow).

**A data file reads only itself** (``docs/your-data.md``): every file is opened so that the
open cannot block and checked to be a regular file (:mod:`pyrovae.data.regular`); an HDF5 or
``.h5ad`` link, dataset or sparse group that points at another file (an external link, external
raw storage, a virtual dataset) is refused in one line naming what it points at, while links
inside the file are followed; a zarr store and an image folder read only regular files inside
them (a symbolic link out of the folder is refused). **Sizes before bytes**
(:mod:`pyrovae.data.budget`): an ``.npz`` entry's declared shape, a streamed array's chunk,
labels and sparse offsets are checked against the memory budget before they are decoded, and
a CSV table is parsed into float32 blocks whose total is checked as it grows.
"""

import csv
import importlib
import io
import math
import os
import posixpath
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from pyrovae.data.budget import CHUNK_SHARE, check_expansion, check_fits, declared_bytes
from pyrovae.data.regular import check_folder, inside, open_fd, open_regular, reopen_path
from pyrovae.data.rows import ArrayRows, CsrRows, NpyRows, Rows, TensorRows
from pyrovae.devices import available_bytes, format_bytes
from pyrovae.errors import DataError, needed_object, one_line, shown
from pyrovae.registry import Registry
from pyrovae.safe_load import UnsafeFile, load_torch_file

FORMATS = Registry("file format")
"""Data file formats by suffix (``".npy"``, ``".npz"``, ``".pt"``, ``".h5"``, ``".hdf5"``, ``".h5ad"``,
``".zarr"``, ``".csv"``): each a :class:`Format` subclass, which ``data.name = "file"`` reads a
``data.path`` of that suffix with. ``@pyrovae.FORMATS.register(".parquet")`` on a subclass adds
one (``docs/your-data.md``).
"""


class Format:
    """A data file format: what ``data.name = "file"`` reads a file of its suffix with.

    A format overrides :meth:`arrays`, the named arrays the file holds (the points, and their
    labels ``y``; or ``train``, ``test``, ``train_y``, ``test_y``), which :meth:`read` then
    chooses among as ``data.key`` and ``data.label_key`` say; or :meth:`read` itself, for a file
    that is one table (``.npy``, ``.csv``, ``.h5ad``). Arrays may be NumPy arrays, tensors, or
    array-likes that read rows by index (HDF5 and zarr datasets: streamed). A file must read
    only itself: open it with :func:`pyrovae.data.regular.open_regular` (a FIFO, a device or a
    symbolic link to one is refused, and the open cannot block), and follow no reference it
    holds to another file.
    """

    def arrays(self, path: Path, where: str) -> Dict[str, object]:
        """The named arrays of the file at ``path`` (``where``: how messages name it)."""
        raise NotImplementedError(f"{type(self).__name__} defines neither arrays() nor read()")

    def read(self, path: Path, where: str, key: Optional[str] = None, label_key: Optional[str] = None):
        """``(train, test, train_y, test_y)``: the points as :class:`~pyrovae.data.rows.Rows` (test
        None where the file has no test split of its own) and the labels as arrays (or None)."""
        train, test, train_y, test_y = _choose(self.arrays(path, where), path, key, label_key)
        rows = [_rows(a, where if i == 0 else f"{where} (test)") if a is not None else None
                for i, a in enumerate((train, test))]
        labels = [None if y is None else _labels_array(y, where) for y in (train_y, test_y)]
        return rows[0], rows[1], labels[0], labels[1]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FORMATS_EXTRA = 'pip install "pyrovae[formats]"'


def _optional(module: str, where: str, what: str):
    """An optional dependency, or one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{where}: reading {what} needs the package {module!r}: {FORMATS_EXTRA}") from None


def _numeric_tensor(array, where: str) -> torch.Tensor:
    """A real-valued dense tensor in native byte order from an array or tensor of a data file;
    anything else is one DataError line."""
    if isinstance(array, torch.Tensor):
        t = _dense(array.detach(), where)
    else:
        try:
            array = np.asarray(array)
        except (ValueError, TypeError, RecursionError) as e:  # ragged or exotic nests in a .pt file
            raise DataError(f"{where}: expected a numeric array ({type(e).__name__})") from None
        if array.dtype.kind not in "biuf":
            raise DataError(f"{where}: expected a numeric array, got dtype {array.dtype}")
        if not array.dtype.isnative:  # e.g. big-endian '>f4' from another machine: converted, not refused
            array = array.astype(array.dtype.newbyteorder("="))
        t = torch.from_numpy(np.ascontiguousarray(array))
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.bool, torch.uint8, torch.int8,
                                                                   torch.int16, torch.int32, torch.int64)):
        raise DataError(f"{where}: expected a numeric array, got dtype {t.dtype}")
    return t


def _dense(t: torch.Tensor, where: str) -> torch.Tensor:
    """A dense tensor with values: sparse layouts are made dense (if that fits in memory),
    quantized tensors dequantized; meta and nested tensors are refused (one line)."""
    if t.is_meta:
        raise DataError(f"{where}: holds a meta tensor (a shape without values); save the values")
    if getattr(t, "is_nested", False):
        raise DataError(f"{where}: holds a nested tensor; save one array of shape (N, ...)")
    if t.is_quantized:
        t = t.dequantize()
    if t.layout != torch.strided:

        need = math.prod(t.shape) * 4
        if need > available_bytes(t.device):
            raise DataError(f"{where}: a {t.layout} tensor of shape {tuple(t.shape)} needs {format_bytes(need)} "
                            f"dense, more than the {format_bytes(available_bytes(t.device))} available")
        t = t.to_dense()
    return t


def _choose(arrays: Dict[str, object], path, key: Optional[str], label_key: Optional[str]):
    """``(train, test, train_y, test_y)`` of a file's named arrays (see the module docstring)."""
    for name, wanted in (("data.key", key), ("data.label_key", label_key)):
        if wanted is not None and wanted not in arrays:
            raise DataError(f"{name} = {shown(wanted)}: no such array in {shown(str(path))}; it holds "
                            f"{shown(sorted(arrays))}")
    if key is not None:
        return arrays[key], None, arrays.get(label_key or "y"), None
    if "train" in arrays:
        return arrays["train"], arrays.get("test"), arrays.get("train_y"), arrays.get("test_y")
    labels = label_key or "y"
    points = [k for k in arrays if k != labels]
    if len(points) == 1:
        return arrays[points[0]], None, arrays.get(labels), None
    raise DataError(f"data.path = {shown(str(path))}: holds {shown(sorted(arrays))}; expected one array (and "
                    "its labels 'y'), or 'train' and 'test' (and 'train_y', 'test_y'); data.key names one")


def load_file(path: str, key: Optional[str] = None, label_key: Optional[str] = None):
    """A user's data file or folder -> ``(train, test, train_y, test_y)``: the points as
    :class:`~pyrovae.data.rows.Rows` and the labels as arrays (None where absent)."""
    file = Path(path)
    where = f"data.path = {shown(str(path))}"
    suffix = file.suffix.lower()
    if file.is_dir() and suffix != ".zarr":
        if key is not None:
            raise DataError(f"data.key = {shown(key)}: a folder of images holds one set of points")
        rows, labels = image_folder(file, where)
        return rows, None, labels, None
    if not os.path.lexists(file):
        raise DataError(f"{where}: no such file")
    if not file.exists():
        raise DataError(f"{where}: a broken symbolic link (to {shown(os.readlink(file))})")
    if suffix not in FORMATS:
        raise DataError(f"{where}: unsupported file type {shown(suffix)}; valid: {', '.join(FORMATS.names())}, "
                        "or a folder of images")
    try:
        return FORMATS.get(suffix)().read(file, where, key, label_key)
    except DataError:
        raise
    except Exception as e:  # a format's reader (a plugin's too) can fail in any way on a hostile file
        needed = needed_object(e)
        reason = (f"it needs the Python object {shown(needed)}; a data file holds tensors or arrays only"
                  if needed else f"{type(e).__name__}: {one_line(str(e), 160)}")
        raise DataError(f"{where}: cannot read {suffix} file ({reason})") from None


@FORMATS.register(".npy")
class NpyFormat(Format):
    """One array ``(N, ...)``, streamed by offset."""

    def read(self, path, where, key=None, label_key=None):
        if key is not None or label_key is not None:
            raise DataError(f"{where}: a .npy file holds one array; data.key and data.label_key name arrays "
                            "in a file that holds several")
        return NpyRows(path, where), None, None, None


@FORMATS.register(".npz")
class NpzFormat(Format):
    """NumPy's archive of arrays, or a SciPy sparse matrix (``save_npz``); read into memory."""

    def arrays(self, path, where):
        with open_regular(path, where) as f:
            _check_npz(f, where)
            with np.load(f, allow_pickle=False) as z:
                names = set(z.files)
                if {"data", "indices", "indptr", "format", "shape"} <= names:  # scipy.sparse.save_npz
                    return {"x": _sparse_npz(z, f, where)}
                return {k: z[k] for k in z.files}


@FORMATS.register(".pt")
class TorchFormat(Format):
    """A tensor, or a dict of them, read without unpickling code."""

    def arrays(self, path, where):
        try:
            obj = load_torch_file(path)  # never unpickles code, never inflates a compressed entry
        except UnsafeFile as e:
            raise DataError(f"{where}: refused unread: {e}") from None
        return obj if isinstance(obj, dict) else {"x": obj}


@FORMATS.register(".h5")
@FORMATS.register(".hdf5")
class HDF5Format(Format):
    """HDF5 datasets (or sparse groups) at the file's top level, streamed by chunks."""

    def arrays(self, path, where):
        h5py = _optional("h5py", where, "HDF5 files")
        f = _h5_file(path, where, "an HDF5 file")
        objects = {name: _h5_get(f, name, where) for name in f.keys()}
        return {name: _h5_array(obj, where) for name, obj in objects.items()
                if isinstance(obj, h5py.Dataset) or _is_sparse_group(obj)}


@FORMATS.register(".zarr")
class ZarrFormat(Format):
    """A zarr store (a folder): an array, or a group of arrays, streamed by chunks."""

    def arrays(self, path, where):
        zarr = _optional("zarr", where, "zarr stores")
        if not path.is_dir():
            raise DataError(f"{where}: a zarr store is a folder")
        check_folder(path, where)  # regular files and folders only, no link out of it
        store = zarr.open(str(path), mode="r")
        arrays = {"x": store} if hasattr(store, "shape") else {name: array for name, array in store.arrays()}
        held = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())  # (checked regular: check_folder)
        for name, array in arrays.items():
            _check_chunks(array, f"{where}: array {shown(name)}")
            check_expansion(declared_bytes(array.shape, np.dtype(array.dtype).itemsize), held,
                            f"{where}: array {shown(name)}")
        return arrays


def _check_npz(f, where: str) -> None:
    """Every entry of an ``.npz`` archive, before any is decoded: each ``.npy`` entry's header read
    (a few bytes) and its declared size checked against what the entry holds and against the
    memory budget, with the other entries' sizes (:mod:`pyrovae.data.budget`)."""
    total = 0
    try:
        with zipfile.ZipFile(f) as archive:
            for info in archive.infolist():
                size = info.file_size  # zipfile never inflates an entry past it
                if info.filename.endswith(".npy"):
                    with archive.open(info) as entry:
                        version = np.lib.format.read_magic(entry)
                        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0)
                        shape, _, dtype = read_header(entry, max_header_size=1 << 20)
                        header = entry.tell()
                    size = declared_bytes(shape, dtype.itemsize)
                    if header + size > info.file_size:
                        raise DataError(f"{where}: entry {shown(info.filename)} declares shape {tuple(shape)} of "
                                        f"{dtype}, more than its {info.file_size} bytes hold")
                total += size
    except DataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, SyntaxError) as e:
        raise DataError(f"{where}: not a readable .npz archive ({type(e).__name__}: {one_line(str(e), 120)})") from None
    finally:
        f.seek(0)
    check_fits(total, where, "its arrays")


def _sparse_npz(z, file, where: str) -> CsrRows:
    fmt = z["format"].item()
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    shape = tuple(int(s) for s in z["shape"])
    if fmt == "csr":
        return CsrRows(z["data"], z["indices"], z["indptr"], shape, where)
    if fmt in ("csc", "coo", "bsr", "dia", "lil", "dok"):
        import scipy.sparse as sp

        file.seek(0)
        matrix = sp.load_npz(file).tocsr()  # a CSR copy: its rows read fast (its size checked: _check_npz)
        return CsrRows(matrix.data, matrix.indices, matrix.indptr, matrix.shape, where)
    raise DataError(f"{where}: a sparse matrix of format {shown(fmt)}; valid: csr, csc, coo")


# -- HDF5: a file that reads only itself -----------------------------------------------------
#: how many soft links one path may pass through (a cycle of them is refused)
MAX_SOFT_LINKS = 32


def _h5_file(file: Path, where: str, what: str):
    """An HDF5 file opened read-only: the path opened without blocking and checked to be a regular
    file, then that same file opened by h5py (:func:`~pyrovae.data.regular.reopen_path`)."""
    h5py = importlib.import_module("h5py")
    fd = open_fd(file, where)
    try:
        return h5py.File(reopen_path(fd, file), "r")
    except OSError as e:
        raise DataError(f"{where}: not {what} ({one_line(str(e), 120)})") from None
    finally:
        os.close(fd)


def _h5_get(group, path: str, where: str, depth: int = 0):
    """The object at ``path`` under ``group``, reached link by link without leaving the file: an
    external link is refused in one line naming the file and object it points at, a soft link is
    followed inside the file, and a dataset is checked by :func:`_check_h5_dataset`. None where
    there is no such object (or a dangling soft link)."""
    h5py = importlib.import_module("h5py")
    from h5py import h5l

    node = group.file if path.startswith("/") else group
    for part in (p for p in path.split("/") if p and p != "."):
        if not isinstance(node, h5py.Group):
            return None
        name = part.encode()
        if not node.id.links.exists(name):
            return None
        kind = node.id.links.get_info(name).type
        here = posixpath.join(node.name, part)
        if kind == h5l.TYPE_EXTERNAL:
            other, target = (v.decode(errors="replace") for v in node.id.links.get_val(name))
            raise DataError(f"{where}: {shown(here)} is an external link to {shown(target)} in the file "
                            f"{shown(other)}; a data file reads only itself (copy the data into it)")
        if kind == h5l.TYPE_SOFT:
            if depth >= MAX_SOFT_LINKS:
                raise DataError(f"{where}: {shown(here)}: more than {MAX_SOFT_LINKS} soft links in a row (a cycle?)")
            node = _h5_get(node, node.id.links.get_val(name).decode(errors="replace"), where, depth + 1)
            if node is None:
                return None
        elif kind == h5l.TYPE_HARD:
            node = node[part]
        else:
            raise DataError(f"{where}: {shown(here)} is a user-defined link; a data file reads only itself")
    if isinstance(node, h5py.Dataset):
        _check_h5_dataset(node, where)
    return node


def _check_h5_dataset(dataset, where: str) -> None:
    """A dataset whose values live in this file: external raw storage and virtual datasets (values
    in other files) are refused in one line naming those files; a chunk must decode within
    :data:`~pyrovae.data.budget.CHUNK_SHARE` of the memory budget."""
    external = dataset.external
    if external:
        files = sorted({str(entry[0]) for entry in external})
        raise DataError(f"{where}: the dataset {shown(dataset.name)} keeps its values in the external file(s) "
                        f"{shown(files)}; a data file reads only itself")
    if dataset.is_virtual:
        sources = sorted({f"{v.file_name}:{v.dset_name}" for v in dataset.virtual_sources()})
        raise DataError(f"{where}: the dataset {shown(dataset.name)} is virtual, mapped from {shown(sources)}; a data "
                        "file reads only itself")
    _check_chunks(dataset, f"{where}: dataset {shown(dataset.name)}")
    check_expansion(declared_bytes(dataset.shape, dataset.dtype.itemsize), dataset.id.get_storage_size(),
                    f"{where}: dataset {shown(dataset.name)}")


def _check_chunks(array, where: str) -> None:
    """A streamed array's chunk (and a zarr shard: what one read decodes) fits the chunk budget."""
    itemsize = np.dtype(array.dtype).itemsize
    for shape in (getattr(array, "chunks", None), getattr(array, "shards", None)):
        if shape:
            check_fits(declared_bytes(shape, itemsize), where, f"one chunk of shape {tuple(shape)}", CHUNK_SHARE)


def _is_sparse_group(obj) -> bool:
    attrs = getattr(obj, "attrs", {})
    encoding = attrs.get("encoding-type", attrs.get("h5sparse_format", ""))
    encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
    return encoding in ("csr_matrix", "csc_matrix", "csr", "csc") \
        and all(obj.id.links.exists(k.encode()) for k in ("data", "indices", "indptr"))


def _h5_array(obj, where: str):
    """An HDF5 dataset as it is (it reads by index), or a CSR group as :class:`CsrRows`."""
    if not _is_sparse_group(obj):
        return obj
    encoding = obj.attrs.get("encoding-type", obj.attrs.get("h5sparse_format", ""))
    encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
    shape = tuple(int(s) for s in obj.attrs.get("shape", obj.attrs.get("h5sparse_shape", ())))
    if len(shape) != 2:
        raise DataError(f"{where}: the sparse matrix {shown(obj.name)} has no 2-D shape attribute")
    parts = {k: _h5_get(obj, k, where) for k in ("data", "indices", "indptr")}
    if any(not hasattr(v, "shape") for v in parts.values()):
        raise DataError(f"{where}: the sparse matrix {shown(obj.name)} lacks its data, indices or indptr arrays")
    data, indices, indptr = parts["data"], parts["indices"], parts["indptr"]
    if encoding.startswith("csc"):  # columns stored together: rows need the whole matrix, made CSR in memory
        import scipy.sparse as sp

        check_fits(sum(declared_bytes(v.shape, v.dtype.itemsize) for v in parts.values()) * 2, where,
                   f"the column-stored sparse matrix {shown(obj.name)} (read whole, made row-stored)")
        matrix = sp.csc_matrix((data[:], indices[:], indptr[:]), shape=shape).tocsr()
        return CsrRows(matrix.data, matrix.indices, matrix.indptr, shape, where)
    return CsrRows(data, indices, indptr, shape, where)


def _rows(array, where: str) -> Rows:
    """Rows of an array: as it is where it reads by index (HDF5, zarr, CSR), else a tensor in memory."""
    if isinstance(array, Rows):
        return array
    if isinstance(array, torch.Tensor) and array.layout in (torch.sparse_coo, torch.sparse_csr) and array.dim() == 2:
        with warnings.catch_warnings():  # "sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            csr = array.detach().coalesce().to_sparse_csr() if array.layout == torch.sparse_coo \
                else array.detach()
        return CsrRows(csr.values().numpy(), csr.col_indices().numpy(), csr.crow_indices().numpy(), csr.shape, where)
    if hasattr(array, "shape") and hasattr(array, "dtype") and not isinstance(array, (np.ndarray, torch.Tensor)):
        if np.dtype(array.dtype).kind not in "biuf":
            raise DataError(f"{where}: expected a numeric array, got dtype {array.dtype}")
        return ArrayRows(array, where)
    return TensorRows(_numeric_tensor(array, where), where)


def _labels_array(labels, where: str):
    """Labels read whole (one number per point: they are small), their declared size checked first."""
    if hasattr(labels, "shape") and not isinstance(labels, (np.ndarray, torch.Tensor)):
        check_fits(declared_bytes(labels.shape, np.dtype(labels.dtype).itemsize), where, "its labels")
        labels = labels[:]
    return labels


# -- AnnData ---------------------------------------------------------------------------------
#: where an ``.h5ad`` file keeps matrices of one row per cell, as ``data.key`` names them
H5AD_KEYS = ("X (the default)", "raw/X", "layers/NAME (or NAME)", "obsm/NAME")


@FORMATS.register(".h5ad")
class AnnDataFormat(Format):
    """AnnData: ``X`` (dense or CSR) or a layer, labels from an ``obs`` column; streamed."""

    def read(self, path, where, key=None, label_key=None):
        rows, labels = _h5ad(path, where, key, label_key)
        return rows, None, labels, None


@FORMATS.register(".csv")
class CsvFormat(Format):
    """Numeric columns, one row per point (a header allowed); parsed line by line into memory."""

    def read(self, path, where, key=None, label_key=None):
        rows, labels = _csv(path, where, key, label_key)
        return rows, None, labels, None


def _h5ad(file: Path, where: str, key: Optional[str], label_key: Optional[str]):
    """``X``, or the matrix ``key`` names (``raw/X``, ``layers/NAME`` or a bare ``NAME``, ``obsm/NAME``),
    of an ``.h5ad`` file, and the ``obs`` column ``label_key``; in AnnData's current layout and the
    older ones scanpy's bundled files use (``raw.X``, ``obs`` and ``obsm`` as record arrays,
    categories in ``uns``); every object reached without leaving the file (:func:`_h5_get`)."""
    _optional("h5py", where, "AnnData (.h5ad) files")
    f = _h5_file(file, where, "an HDF5 (.h5ad) file")
    points = _h5ad_matrix(f, key or "X", where)
    if points is None:
        if key is None:
            raise DataError(f"{where}: an .h5ad file without X")
        raise DataError(f"data.key = {shown(key)}: no such matrix in {shown(str(file))}; valid: "
                        f"{', '.join(H5AD_KEYS)}; it holds {shown(_h5ad_matrices(f, where))}")
    rows = _rows(_h5_array(points, where), where)
    labels = None
    if label_key is not None:
        labels = _obs_labels(f, label_key, f"data.label_key = {shown(label_key)}", str(file))
    return rows, labels


def _h5ad_matrix(f, key: str, where: str):
    """The matrix at ``key`` (an HDF5 dataset or sparse group, or a record array's field read whole
    in the older layout), or None."""
    if key == "X":
        return _h5_get(f, "X", where)
    if key == "raw/X":  # AnnData writes raw/X; before 0.7, raw.X at the top
        found = _h5_get(f, "raw/X", where)
        return found if found is not None else _h5_get(f, "raw.X", where)
    group, _, name = key.rpartition("/") if "/" in key else ("layers", "", key)
    if group not in ("layers", "obsm") or not name or "/" in name:
        return None
    parent = _h5_get(f, group, where)
    if hasattr(parent, "keys"):
        return _h5_get(parent, name, where)
    if parent is not None and parent.dtype.names and name in parent.dtype.names:  # obsm as a record array (0.6)
        check_fits(declared_bytes(parent.shape, parent.dtype.itemsize), where, f"{group} (read whole)")
        return np.asarray(parent[name])
    return None


def _h5ad_matrices(f, where: str) -> list:
    """The ``data.key`` values an ``.h5ad`` file holds (for messages)."""
    found = ["X"] if _h5_get(f, "X", where) is not None else []
    if _h5_get(f, "raw/X", where) is not None or _h5_get(f, "raw.X", where) is not None:
        found.append("raw/X")
    for group in ("layers", "obsm"):
        parent = _h5_get(f, group, where)
        names = parent.keys() if hasattr(parent, "keys") else parent.dtype.names if parent is not None else None
        found += [f"{group}/{name}" for name in sorted(names or ())]
    return found


def _obs_labels(f, label_key: str, where: str, file: str) -> np.ndarray:
    """Class numbers from the ``obs`` column ``label_key``: a categorical's codes (a group of codes and
    categories; codes with their categories beside them in ``obs/__categories``; or, in the older
    record-array ``obs``, codes with ``uns/<label_key>_categories``), whole numbers, or strings
    (numbered in sorted order); read whole once their declared size is checked."""
    obs = _h5_get(f, "obs", where)
    if hasattr(obs, "keys"):  # AnnData >= 0.7: a group of columns
        column = _h5_get(obs, label_key, where) if "/" not in label_key and not label_key.startswith("__") else None
        columns = sorted(k for k in obs.keys() if k not in ("_index", "__categories"))
    elif obs is not None and obs.dtype.names:  # AnnData 0.6: one record array
        column = None
        if label_key in obs.dtype.names and label_key != "index":
            check_fits(declared_bytes(obs.shape, obs.dtype.itemsize), where, "obs (read whole)")
            column = np.asarray(obs[label_key])
        columns = sorted(n for n in obs.dtype.names if n != "index")
    else:
        column, columns = None, []
    if column is None:
        raise DataError(f"{where}: no such obs column in {shown(file)}; it holds {shown(columns)}")
    codes = _h5_get(column, "codes", where) if hasattr(column, "keys") else None
    if codes is not None:
        return _codes(_labels_array(codes, where), where)
    if not hasattr(column, "dtype"):
        raise DataError(f"{where}: an obs column is an array or a categorical (codes and categories)")
    values = _labels_array(column, where)
    if values.dtype.kind in "iu" and _has_categories(f, column, label_key, where):
        return _codes(values, where)  # the older layouts' categorical: codes, categories kept elsewhere
    if values.dtype.kind in "OSU":
        strings = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in values])
        return np.unique(strings, return_inverse=True)[1].astype(np.int64)
    return values


def _has_categories(f, column, label_key: str, where: str) -> bool:
    """Whether an integer ``obs`` column is a categorical's codes in an older layout: its categories
    in ``obs/__categories/<name>`` (0.7) or ``uns/<name>_categories`` (0.6)."""
    if hasattr(column, "attrs") and "categories" in column.attrs:
        return True
    return any(_h5_get(f, path, where) is not None
               for path in (f"obs/__categories/{label_key}", f"uns/{label_key}_categories"))


def _codes(codes, where: str) -> np.ndarray:
    codes = np.asarray(codes, dtype=np.int64)
    if (codes < 0).any():
        raise DataError(f"{where}: {int((codes < 0).sum())} points have no category (missing values)")
    return codes


# -- CSV -------------------------------------------------------------------------------------
#: the longest line of a CSV file, in characters (a line is parsed whole; a wider table is refused)
MAX_CSV_LINE = 8 << 20
#: rows of one float32 block of a CSV table as it is parsed
CSV_BLOCK_ROWS = 4096


def _csv(file: Path, where: str, key: Optional[str], label_key: Optional[str]):
    """Numeric columns, one row per point (read into memory, float32); the first row is a header
    if any of its fields is not a number; ``label_key`` names the labels' column in it.

    Read in bounded memory: line by line (each at most :data:`MAX_CSV_LINE` characters) into
    float32 blocks, whose total (and the copy that joins them) is checked against the memory
    budget before each block is allocated; never the whole text, nor a Python list of it."""
    if key is not None:
        raise DataError(f"data.key = {shown(key)}: a CSV file holds one table; data.label_key names its labels' "
                        "column")
    header, width, blocks, filled = None, None, [], 0
    with open_regular(file, where) as raw, io.TextIOWrapper(raw, newline="", encoding="utf-8") as text:
        reader = csv.reader(_csv_lines(text, where))
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            if width is None:
                width = len(row)
                if not all(_number(cell) for cell in row):
                    header = [cell.strip() for cell in row]
                    continue
            if len(row) != width:
                raise DataError(f"{where}: line {reader.line_num} has {len(row)} fields, the first "
                                f"{'(the header) ' if header else ''}{width}; every row must have as many")
            if not blocks or filled == CSV_BLOCK_ROWS:
                check_fits(2 * (len(blocks) + 1) * CSV_BLOCK_ROWS * width * 4, where,
                           f"its table (more than {len(blocks) * CSV_BLOCK_ROWS} rows of {width} numbers as float32)")
                blocks.append(np.empty((CSV_BLOCK_ROWS, width), dtype=np.float32))
                filled = 0
            try:
                blocks[-1][filled] = [float(cell) for cell in row]
            except ValueError:
                raise DataError(f"{where}: line {reader.line_num} holds a field that is not a number") from None
            filled += 1
    if width is None:
        raise DataError(f"{where}: an empty CSV file")
    values = np.concatenate(blocks)[:(len(blocks) - 1) * CSV_BLOCK_ROWS + filled] if blocks \
        else np.empty((0, width), dtype=np.float32)
    blocks.clear()
    labels = None
    if label_key is not None:
        if header is None or label_key not in header:
            raise DataError(f"data.label_key = {shown(label_key)}: no such column in {shown(str(file))}'s header "
                            f"({shown(header) if header else 'it has none'})")
        column = header.index(label_key)
        labels, values = values[:, column].astype(np.float64), np.delete(values, column, axis=1)
    if values.shape[0] == 0:
        raise DataError(f"{where}: no data rows")
    if values.size == 0:
        raise DataError(f"{where}: no data columns")
    return TensorRows(torch.from_numpy(np.ascontiguousarray(values)), where), labels


def _csv_lines(text, where: str):
    """The lines of a CSV file, each read with a bound (a file without line breaks is refused, not
    read whole)."""
    number = 0
    while True:
        line = text.readline(MAX_CSV_LINE + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_CSV_LINE:
            raise DataError(f"{where}: line {number} is longer than {MAX_CSV_LINE} characters; a CSV file holds a "
                            "row per line")
        yield line


def _number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


# -- image folders ---------------------------------------------------------------------------
class ImageRows(Rows):
    """The images of a folder, one file per point, decoded when read (Pillow): grey images as
    ``(1, H, W)``, colour ones as ``(3, H, W)``, uint8 (so times 1/255 by default)."""

    def __init__(self, files, where: str, root: Path):
        self.files, self.where, self.root = list(files), where, root
        self.pil = _optional("PIL.Image", where, "image folders")
        first = self._image(0)
        self.row_shape, self.dtype = tuple(first.shape), torch.uint8

    def __len__(self) -> int:
        return len(self.files)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "pil"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.pil = importlib.import_module("PIL.Image")

    def _image(self, i: int) -> torch.Tensor:
        path = self.files[i]
        try:  # the file listed (resolved inside the folder), opened without blocking or following a link
            with open_regular(path, self.where, follow=False) as f, warnings.catch_warnings():
                warnings.simplefilter("ignore", self.pil.DecompressionBombWarning)  # sizes are checked below
                with self.pil.open(f) as image:
                    mode = "L" if image.mode in ("1", "L", "I", "I;16", "F", "LA") else "RGB"
                    width, height = image.size  # from the header: checked before a pixel is decoded
                    shape = (1 if mode == "L" else 3, height, width)
                    if self.__dict__.get("row_shape", shape) != shape:  # (the first image sets it)
                        raise DataError(f"{self.where}: {self._name(i)} is {shape} (channels, height, width), the "
                                        f"first image {self.row_shape}; every image must have one size and colour "
                                        "mode")
                    check_fits(width * height * 16, f"{self.where}: {self._name(i)}", f"an image of {width}x{height}",
                               CHUNK_SHARE)
                    image.load()
                    array = np.asarray(image.convert(mode))
        except DataError:
            raise
        except (OSError, ValueError, SyntaxError, self.pil.DecompressionBombError) as e:
            raise DataError(f"{self.where}: {self._name(i)} is not a readable image ({type(e).__name__})") from None
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.array(array, copy=True, order="C"))

    def _name(self, i: int) -> str:
        path = Path(self.files[i])
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else path.name

    def take(self, index: np.ndarray) -> torch.Tensor:
        images = []
        for i in index.tolist():
            images.append(self._image(i))  # its size checked against the first image's before it is decoded
        return torch.stack(images) if images else torch.empty((0, *self.row_shape), dtype=torch.uint8)


def image_folder(folder: Path, where: str):
    """The images of ``folder`` (sorted by path) and their labels: with class subfolders (as
    torchvision's ``ImageFolder``), the subfolders' sorted order numbers the classes; images
    directly in the folder have no labels. Only regular files inside the folder are read: an
    image file that is a FIFO or a device, or a symbolic link (a file's or a class folder's)
    that leaves the folder, is one line (:func:`_image_files`)."""
    root = folder.resolve()
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        files, labels = [], []
        for number, d in enumerate(classes):
            found = _image_files(sorted(d.rglob("*")), root, where)
            files += found
            labels += [number] * len(found)
        if not files:
            raise DataError(f"{where}: no PNG or JPEG images in its class folders")
        return ImageRows(files, where, root), np.asarray(labels, dtype=np.int64)
    files = _image_files(sorted(folder.iterdir()), root, where)
    if not files:
        raise DataError(f"{where}: a folder without PNG or JPEG images (or class folders of them)")
    return ImageRows(files, where, root), None


def _image_files(paths, root: Path, where: str):
    """The image files among ``paths`` (by suffix), each resolved and checked to be a regular file
    inside ``root`` (they are later opened at that resolved path, never through a link)."""
    out = []
    for path in paths:
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.is_dir():
            continue
        real = path.resolve()
        if not inside(real, root):
            raise DataError(f"{where}: {shown(path.name)} is a symbolic link out of the folder (to "
                            f"{shown(str(real))}); an image folder reads only the files inside it")
        if not real.exists():
            raise DataError(f"{where}: {shown(path.name)} is a broken symbolic link")
        if not real.is_file():
            os.close(open_fd(real, where))  # says what it is (a FIFO, a device, ...)
        out.append(real)
    return out


def as_labels(array, n: int, where: str) -> torch.Tensor:
    """Class labels as an int64 tensor ``(N,)`` of values 0, 1, ...; anything else is one DataError line."""
    t = _numeric_tensor(array, where)
    if t.dim() != 1 or t.shape[0] != n:
        raise DataError(f"{where}: labels must be one number per point, shape ({n},); got {tuple(t.shape)}")
    if t.is_floating_point() and not bool((torch.isfinite(t) & (t == t.round())).all()):
        raise DataError(f"{where}: labels must be whole numbers 0, 1, ...")
    if n and (bool((t < 0).any()) or float(t.max()) >= 2**20):
        raise DataError(f"{where}: labels must be class numbers in [0, 2^20)")
    return t.to(torch.int64)
