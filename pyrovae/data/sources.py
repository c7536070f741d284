"""Where data sets come from: readers of each source into arrays and tensors, checked."""

import os
import urllib.request
from pathlib import Path

import numpy as np
import torch

from pyrovae.errors import DataError, one_line, shown

FREY_FACE_URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"


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
