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
"""

import csv
import importlib
import math
import warnings
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from pyrovae.data.rows import ArrayRows, CsrRows, NpyRows, Rows, TensorRows
from pyrovae.devices import available_bytes, format_bytes
from pyrovae.errors import DataError, needed_object, one_line, shown
from pyrovae.safe_load import UnsafeFile, load_torch_file

SUFFIXES = (".npy", ".npz", ".pt", ".h5", ".hdf5", ".h5ad", ".zarr", ".csv")
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
    if not file.exists():
        raise DataError(f"{where}: no such file")
    if suffix not in SUFFIXES:
        raise DataError(f"{where}: unsupported file type {shown(suffix)}; valid: {', '.join(SUFFIXES)}, "
                        "or a folder of images")
    try:
        if suffix == ".npy":
            if key is not None or label_key is not None:
                raise DataError(f"{where}: a .npy file holds one array; data.key and data.label_key name arrays "
                                "in a file that holds several")
            return NpyRows(file, where), None, None, None
        if suffix in (".csv", ".h5ad"):
            rows, labels = (_csv if suffix == ".csv" else _h5ad)(file, where, key, label_key)
            return rows, None, labels, None
        arrays = _arrays(file, suffix, where)
    except DataError:
        raise
    except Exception as e:
        needed = needed_object(e)
        reason = (f"it needs the Python object {shown(needed)}; a data file holds tensors or arrays only"
                  if needed else f"{type(e).__name__}: {one_line(str(e), 160)}")
        raise DataError(f"{where}: cannot read {suffix} file ({reason})") from None
    train, test, train_y, test_y = _choose(arrays, path, key, label_key)
    rows = [_rows(a, where if i == 0 else f"{where} (test)") if a is not None else None
            for i, a in enumerate((train, test))]
    labels = [None if y is None else _labels_array(y, where) for y in (train_y, test_y)]
    return rows[0], rows[1], labels[0], labels[1]


def _arrays(file: Path, suffix: str, where: str) -> Dict[str, object]:
    """The named arrays (or array-likes that read by index) of an .npz, .pt, HDF5 or zarr file."""
    if suffix == ".npz":
        with np.load(file, allow_pickle=False) as z:
            names = set(z.files)
            if {"data", "indices", "indptr", "format", "shape"} <= names:  # scipy.sparse.save_npz
                return {"x": _sparse_npz(z, file, where)}
            return {k: z[k] for k in z.files}
    if suffix == ".pt":
        try:
            obj = load_torch_file(file)  # never unpickles code, never inflates a compressed entry
        except UnsafeFile as e:
            raise DataError(f"{where}: refused unread: {e}") from None
        return obj if isinstance(obj, dict) else {"x": obj}
    if suffix in (".h5", ".hdf5"):
        h5py = _optional("h5py", where, "HDF5 files")
        f = h5py.File(file, "r")
        return {name: _h5_array(f[name], where) for name in f.keys()
                if isinstance(f[name], h5py.Dataset) or _is_sparse_group(f[name])}
    zarr = _optional("zarr", where, "zarr stores")
    store = zarr.open(str(file), mode="r")
    if hasattr(store, "shape"):
        return {"x": store}
    return {name: array for name, array in store.arrays()}


def _sparse_npz(z, file: Path, where: str) -> CsrRows:
    fmt = z["format"].item()
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    shape = tuple(int(s) for s in z["shape"])
    if fmt == "csr":
        return CsrRows(z["data"], z["indices"], z["indptr"], shape, where)
    if fmt in ("csc", "coo", "bsr", "dia", "lil", "dok"):
        import scipy.sparse as sp

        matrix = sp.load_npz(file).tocsr()  # a CSR copy: its rows read fast
        return CsrRows(matrix.data, matrix.indices, matrix.indptr, matrix.shape, where)
    raise DataError(f"{where}: a sparse matrix of format {shown(fmt)}; valid: csr, csc, coo")


def _is_sparse_group(obj) -> bool:
    attrs = getattr(obj, "attrs", {})
    encoding = attrs.get("encoding-type", attrs.get("h5sparse_format", ""))
    encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
    return encoding in ("csr_matrix", "csc_matrix", "csr", "csc") \
        and all(k in obj for k in ("data", "indices", "indptr"))


def _h5_array(obj, where: str):
    """An HDF5 dataset as it is (it reads by index), or a CSR group as :class:`CsrRows`."""
    if not _is_sparse_group(obj):
        return obj
    encoding = obj.attrs.get("encoding-type", obj.attrs.get("h5sparse_format", ""))
    encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
    shape = tuple(int(s) for s in obj.attrs.get("shape", obj.attrs.get("h5sparse_shape", ())))
    if len(shape) != 2:
        raise DataError(f"{where}: the sparse matrix {shown(obj.name)} has no 2-D shape attribute")
    if encoding.startswith("csc"):  # columns stored together: rows need the whole matrix, made CSR in memory
        import scipy.sparse as sp

        matrix = sp.csc_matrix((obj["data"][:], obj["indices"][:], obj["indptr"][:]), shape=shape).tocsr()
        return CsrRows(matrix.data, matrix.indices, matrix.indptr, shape, where)
    return CsrRows(obj["data"], obj["indices"], obj["indptr"], shape, where)


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
    """Labels read whole (one number per point: they are small)."""
    if hasattr(labels, "shape") and not isinstance(labels, (np.ndarray, torch.Tensor)):
        labels = labels[:]
    return labels


# -- AnnData ---------------------------------------------------------------------------------
def _h5ad(file: Path, where: str, key: Optional[str], label_key: Optional[str]):
    """``X`` (or the layer ``key``) of an ``.h5ad`` file, and the ``obs`` column ``label_key``."""
    h5py = _optional("h5py", where, "AnnData (.h5ad) files")
    try:
        f = h5py.File(file, "r")
    except OSError as e:
        raise DataError(f"{where}: not an HDF5 (.h5ad) file ({one_line(str(e), 120)})") from None
    if key is None:
        if "X" not in f:
            raise DataError(f"{where}: an .h5ad file without X")
        points = f["X"]
    else:
        layers = f.get("layers")
        if layers is None or key not in layers:
            raise DataError(f"data.key = {shown(key)}: no such layer in {shown(str(file))}; it holds "
                            f"{shown(sorted(layers) if layers is not None else [])}")
        points = layers[key]
    rows = _rows(_h5_array(points, where), where)
    labels = None
    if label_key is not None:
        obs = f.get("obs")
        if obs is None or label_key not in obs:
            raise DataError(f"data.label_key = {shown(label_key)}: no such obs column in {shown(str(file))}; it "
                            f"holds {shown(sorted(k for k in obs.keys() if k != '_index') if obs else [])}")
        labels = _obs_labels(obs[label_key], f"data.label_key = {shown(label_key)}")
    return rows, labels


def _obs_labels(column, where: str) -> np.ndarray:
    """Class numbers from an ``obs`` column: a categorical's codes, whole numbers, or strings
    (numbered in sorted order)."""
    if hasattr(column, "keys") and "codes" in column:
        codes = np.asarray(column["codes"][:], dtype=np.int64)
        if (codes < 0).any():
            raise DataError(f"{where}: {int((codes < 0).sum())} points have no category (missing values)")
        return codes
    values = column[:]
    if values.dtype.kind in "OSU":
        strings = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in values])
        return np.unique(strings, return_inverse=True)[1].astype(np.int64)
    return values


# -- CSV -------------------------------------------------------------------------------------
def _csv(file: Path, where: str, key: Optional[str], label_key: Optional[str]):
    """Numeric columns, one row per point (read into memory, float32); the first row is a header
    if any of its fields is not a number; ``label_key`` names the labels' column in it."""
    if key is not None:
        raise DataError(f"data.key = {shown(key)}: a CSV file holds one table; data.label_key names its labels' "
                        "column")
    with open(file, newline="") as f:
        reader = csv.reader(f)
        rows = [r for r in reader if r and any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"{where}: an empty CSV file")
    header = None
    if not all(_number(cell) for cell in rows[0]):
        header, rows = [cell.strip() for cell in rows[0]], rows[1:]
    width = len(header) if header else len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{where}: line {i + 1 + bool(header)} has {len(row)} fields, the first "
                            f"{'(the header) ' if header else ''}{width}; every row must have as many")
    try:
        values = np.asarray([[float(cell) for cell in row] for row in rows], dtype=np.float64)
    except ValueError:
        line = next(i for i, row in enumerate(rows) if not all(_number(c) for c in row))
        raise DataError(f"{where}: line {line + 1 + bool(header)} holds a field that is not a number") from None
    labels = None
    if label_key is not None:
        if header is None or label_key not in header:
            raise DataError(f"data.label_key = {shown(label_key)}: no such column in {shown(str(file))}'s header "
                            f"({shown(header) if header else 'it has none'})")
        column = header.index(label_key)
        labels, values = values[:, column], np.delete(values, column, axis=1)
    if values.size == 0:
        raise DataError(f"{where}: no data columns")
    return TensorRows(torch.from_numpy(values.astype(np.float32)), where), labels


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
        try:
            with self.pil.open(path) as image:
                image.load()
                mode = "L" if image.mode in ("1", "L", "I", "I;16", "F", "LA") else "RGB"
                array = np.asarray(image.convert(mode))
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{self.where}: {self._name(i)} is not a readable image ({type(e).__name__})") from None
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.array(array, copy=True, order="C"))

    def _name(self, i: int) -> str:
        return str(Path(self.files[i]).relative_to(self.root))

    def take(self, index: np.ndarray) -> torch.Tensor:
        images = []
        for i in index.tolist():
            image = self._image(i)
            if tuple(image.shape) != self.row_shape:
                raise DataError(f"{self.where}: {self._name(i)} is {tuple(image.shape)} (channels, height, width), "
                                f"the first image {self.row_shape}; every image must have one size and colour mode")
            images.append(image)
        return torch.stack(images) if images else torch.empty((0, *self.row_shape), dtype=torch.uint8)


def image_folder(folder: Path, where: str):
    """The images of ``folder`` (sorted by path) and their labels: with class subfolders (as
    torchvision's ``ImageFolder``), the subfolders' sorted order numbers the classes; images
    directly in the folder have no labels."""
    images = lambda d: sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)  # noqa: E731
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        files, labels = [], []
        for number, d in enumerate(classes):
            found = [p for p in sorted(d.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            files += found
            labels += [number] * len(found)
        if not files:
            raise DataError(f"{where}: no PNG or JPEG images in its class folders")
        return ImageRows(files, where, folder), np.asarray(labels, dtype=np.int64)
    files = images(folder)
    if not files:
        raise DataError(f"{where}: a folder without PNG or JPEG images (or class folders of them)")
    return ImageRows(files, where, folder), None
