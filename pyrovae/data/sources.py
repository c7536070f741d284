"""Where data sets come from: readers of each source into arrays and tensors, checked."""

import math
import os
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pyrovae.devices import available_bytes, format_bytes
from pyrovae.errors import DataError, needed_object, one_line, shown
from pyrovae.safe_load import UnsafeFile, load_torch_file

FREY_FACE_URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"


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


#: what uint8 values (pixels 0..255) are multiplied by, unless data.scale says otherwise
UINT8_SCALE = 1 / 255


def _as_float_tensor(array, where: str, scale: Optional[float] = None) -> torch.Tensor:
    """The points as float32 ``(N, ...)``, times ``scale`` (default: 1/255 for uint8 pixels, else 1)."""
    t = _numeric_tensor(array, where)
    if t.dim() < 2:
        raise DataError(f"{where}: expected an array of shape (N, ...) with one row per point, "
                        f"got shape {tuple(t.shape)}")
    if math.prod(t.shape[1:]) == 0:
        raise DataError(f"{where}: data points of shape {tuple(t.shape[1:])} hold no values")
    if scale is None:
        scale = UINT8_SCALE if t.dtype == torch.uint8 else 1.0
    t = t.float()
    if scale != 1.0:
        t.mul_(scale)
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"{where}: contains NaN or infinite values")
    return t.contiguous()


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


def load_digits():
    """scikit-learn's 8x8 digits: ``(1797, 1, 8, 8)`` grey levels in [0, 1] and their labels 0..9."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    return torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1), torch.from_numpy(digits.target).long()


def load_mnist(root: str, train: bool, download: bool = True):
    """MNIST through torchvision: ``(N, 1, 28, 28)`` grey levels in [0, 1] and their labels 0..9."""
    from torchvision.datasets import MNIST

    try:
        mnist = MNIST(root, train=train, download=download)
    except (RuntimeError, OSError) as e:
        hint = "" if download else " (data.download = false)"
        raise DataError(f"data.path = {shown(root)}: MNIST not found or not downloadable{hint}: "
                        f"{one_line(str(e), 160) if str(e) else type(e).__name__}; torchvision expects "
                        f"{os.path.join(root, 'MNIST', 'raw')}/*-ubyte (with data.download = true the .gz "
                        "files there are enough: it checks and extracts them)") from None
    return mnist.data.float().div_(255.0).unsqueeze(1), mnist.targets.long()


def load_frey_face(path: str, download: bool = True) -> torch.Tensor:
    """Frey Face as ``(1965, 1, 28, 20)`` grey levels in [0, 1], from ``frey_rawface.mat``."""
    from scipy.io import loadmat

    file = Path(path)
    if file.is_dir() or not file.suffix:
        file = file / "frey_rawface.mat"
    if not file.exists():
        if not download:
            raise DataError(f"data.path = {shown(str(file))}: no such file (data.download = false)")
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(".part")
            urllib.request.urlretrieve(FREY_FACE_URL, tmp)
            os.replace(tmp, file)
        except OSError as e:
            raise DataError(f"data.path = {shown(str(file))}: not found and download from {FREY_FACE_URL} failed "
                            f"({e}); put frey_rawface.mat there") from None
    try:
        ff = loadmat(file)["ff"]
    except Exception as e:  # scipy raises several types for a foreign or truncated file
        raise DataError(f"data.path = {shown(str(file))}: not a Frey Face .mat file with variable 'ff' ({e})") from None
    return torch.from_numpy(ff.T.reshape(-1, 1, 28, 20).astype(np.float32) / 255.0)


def load_file(path: str, key: Optional[str] = None, label_key: Optional[str] = None):
    """A user's array file -> ``(train, test, train_y, test_y)`` (None where absent): one array
    (``.npy``, or the only array of an ``.npz`` / ``.pt`` besides its labels ``y``), or the
    arrays ``train`` and ``test`` with ``train_y`` and ``test_y``. In a file that holds several
    arrays, ``key`` names the points' array and ``label_key`` the labels' (default ``y``, if present)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data.path = {shown(str(path))}: no such file")
    suffix = file.suffix.lower()
    try:
        if suffix == ".npy":
            if key is not None or label_key is not None:
                raise DataError(f"data.path = {shown(str(path))}: a .npy file holds one array; data.key and "
                                "data.label_key name arrays in an .npz or .pt file")
            # mapped, not read: the pages come in as the points are converted (and the size is checked first)
            return np.load(file, mmap_mode="c", allow_pickle=False), None, None, None
        if suffix == ".npz":
            with np.load(file, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        elif suffix == ".pt":
            try:
                obj = load_torch_file(file)  # never unpickles code, never inflates a compressed entry
            except UnsafeFile as e:
                raise DataError(f"data.path = {shown(str(path))}: refused unread: {e}") from None
            arrays = obj if isinstance(obj, dict) else {"x": obj}
        else:
            raise DataError(f"data.path = {shown(str(path))}: unsupported file type {shown(suffix)}; "
                            "valid: .npy, .npz, .pt")
    except DataError:
        raise
    except Exception as e:
        needed = needed_object(e)
        reason = (f"it needs the Python object {shown(needed)}; a data file holds tensors or arrays only"
                  if needed else f"{type(e).__name__}: {one_line(str(e), 160)}")
        raise DataError(f"data.path = {shown(str(path))}: cannot read {suffix} file ({reason})") from None
    if key is not None or label_key is not None:
        for name, wanted in (("data.key", key), ("data.label_key", label_key)):
            if wanted is not None and wanted not in arrays:
                raise DataError(f"{name} = {shown(wanted)}: no such array in {shown(str(path))}; it holds "
                                f"{shown(sorted(arrays))}")
        if key is not None:
            return arrays[key], None, arrays.get(label_key or "y"), None
    if "train" in arrays:
        return arrays["train"], arrays.get("test"), arrays.get("train_y"), arrays.get("test_y")
    if label_key is not None:
        points = [k for k in arrays if k != label_key]
        if len(points) == 1:
            return arrays[points[0]], None, arrays[label_key], None
    points = [k for k in arrays if k != "y"]
    if len(points) == 1:
        return arrays[points[0]], None, arrays.get("y"), None
    raise DataError(f"data.path = {shown(str(path))}: holds {shown(sorted(arrays))}; expected one array (and "
                    "its labels 'y'), or 'train' and 'test' (and 'train_y', 'test_y')")


