"""The data sets by name (``[data] name``): :data:`DATASETS`, the built-in sources (scikit-learn's
digits, torchvision's sets, Frey Face) and a user's file or folder (``file``, read by
:data:`~pyrovae.data.formats.FORMATS`), and which ``[data]`` keys reach a source.

Sources, by ``[data] name``:

- ``digits``: scikit-learn's bundled 8x8 digits (1797 images; counts of ink pixels 0..16,
  scaled to grey levels in [0, 1] unless ``scale`` says otherwise); needs no network: the
  embedded default.
- ``mnist``, ``fashion_mnist``, ``kmnist``: through torchvision (``path`` is torchvision's root
  folder; 60000 / 10000); ``cifar10``, ``svhn`` and ``celeba`` likewise.
- ``static_mnist``: Larochelle & Murray's fixed binarization of MNIST from the standard ``.amat``
  files (``path`` is their folder; 50000 / 10000 / 10000, the middle one its validation split).
- ``frey_face``: Frey Face, 1965 faces of 28x20 from the standard ``frey_rawface.mat``
  (``path`` is the file or its folder; downloaded there if missing and ``download``).
- ``file``: a user's file or folder, read by its suffix (:data:`pyrovae.data.formats.FORMATS`:
  ``.npy``, ``.npz``, ``.pt``, HDF5, AnnData, zarr, CSV, a plugin's) or a folder of images.
  ``data.key`` and ``data.label_key`` name the arrays in a file that holds several; uint8
  values (pixels 0..255) are multiplied by 1/255, other types by 1, unless ``data.scale`` says
  otherwise (or the model scores counts).
"""

import inspect
from pathlib import Path
from typing import Optional

import torch

from pyrovae.data.formats import ImageRows, as_labels, load_file
from pyrovae.data.sources import (
    celeba_files,
    load_cifar10,
    load_digits,
    load_frey_face,
    load_mnist,
    load_mnist_layout,
    load_static_mnist,
    load_svhn,
)
from pyrovae.data.splits import StreamedSplit
from pyrovae.errors import DataError, shown
from pyrovae.registry import Registry

DATASETS = Registry("data set")
"""Data sources by name (``data.name``): functions whose options are the ``[data]`` table's other keys,
returning a :class:`Dataset`, a map-style torch ``Dataset``, a pair ``(train, test)`` of them, or a
triple ``(train, validation, test)`` (a source with a validation split of its own: mark the function
``has_validation = True``);
``@DATASETS.register("mine")`` adds one (``docs/write-your-own.md``).
"""


@DATASETS.register("digits")
def digits(scale: Optional[float] = None):
    """scikit-learn's bundled 8x8 digits, with their labels (no download: the embedded default).
    Each value counts the ink pixels of a 4x4 block of a 32x32 bitmap (0..16): ``scale`` unset
    gives grey levels in [0, 1] (1/16), and the counts themselves (1) for a model that scores
    counts (a count likelihood, a topic model)."""
    images, labels = load_digits()
    return torch.utils.data.TensorDataset(images if scale is None else images * (16.0 * scale), labels)


@DATASETS.register("mnist")
def mnist(path: str = "data", download: bool = True):
    """MNIST through torchvision (``path``: its root folder), 60000 / 10000, with labels."""
    return (torch.utils.data.TensorDataset(*load_mnist(path, True, download)),
            torch.utils.data.TensorDataset(*load_mnist(path, False, download)))


@DATASETS.register("fashion_mnist")
def fashion_mnist(path: str = "data", download: bool = True):
    """Fashion-MNIST through torchvision (``path``: its root folder), 60000 / 10000 28x28 uint8, with labels."""
    return tuple(torch.utils.data.TensorDataset(*load_mnist_layout("FashionMNIST", path, train, download))
                 for train in (True, False))


@DATASETS.register("kmnist")
def kmnist(path: str = "data", download: bool = True):
    """Kuzushiji-MNIST through torchvision (``path``: its root folder), 60000 / 10000, with labels."""
    return tuple(torch.utils.data.TensorDataset(*load_mnist_layout("KMNIST", path, train, download))
                 for train in (True, False))


@DATASETS.register("cifar10")
def cifar10(path: str = "data", download: bool = True):
    """CIFAR-10 in torchvision's folder (``path``: its root), 50000 / 10000 3x32x32 uint8, with labels."""
    return tuple(torch.utils.data.TensorDataset(*load_cifar10(path, train, download)) for train in (True, False))


@DATASETS.register("svhn")
def svhn(path: str = "data", download: bool = True):
    """SVHN's cropped digits (``path``: torchvision's root), 73257 / 26032 3x32x32 uint8, with labels."""
    return tuple(torch.utils.data.TensorDataset(*load_svhn(path, train, download)) for train in (True, False))


@DATASETS.register("celeba")
def celeba(path: str = "data", download: bool = True):
    """CelebA's aligned faces in torchvision's layout (``path``: its root), its train and test
    partitions as 3x218x178 uint8 images, decoded a batch at a time (streamed unless they fit)."""
    where = f"data.path = {shown(path)}"
    root = Path(path) / "celeba" / "img_align_celeba"
    return tuple(StreamedSplit(ImageRows([f.resolve() for f in celeba_files(path, train, download)], where, root))
                 for train in (True, False))


@DATASETS.register("static_mnist")
def static_mnist(path: str = "data", download: bool = True):
    """Static MNIST: Larochelle & Murray's fixed binarization of MNIST (Burda et al. 2016; Tomczak
    & Welling 2018), 50000 / 10000 / 10000 28x28 images in {0, 1} without labels, from the
    standard ``binarized_mnist_{train,valid,test}.amat`` files in the folder ``path``. Its
    validation split is the papers' (early stopping, ``best.pt``)."""
    train, valid, test = (torch.utils.data.TensorDataset(load_static_mnist(path, split, download))
                          for split in ("train", "valid", "test"))
    return train, valid, test


#: the sources that bring a validation split of their own (their result is (train, validation, test))
static_mnist.has_validation = True


@DATASETS.register("frey_face")
def frey_face(path: str = "data", download: bool = True):
    """Frey Face from ``frey_rawface.mat`` (``path``: the file or its folder)."""
    return torch.utils.data.TensorDataset(load_frey_face(path, download))


@DATASETS.register("file")
def user_file(path: str, key: Optional[str] = None, label_key: Optional[str] = None, scale: Optional[float] = None):
    """A user's file or folder, read by its extension (see :mod:`pyrovae.data.formats`)."""
    where = f"data.path = {shown(path)}"
    train_rows, test_rows, train_labels, test_labels = load_file(path, key, label_key)
    train_y = None if train_labels is None else as_labels(train_labels, len(train_rows), f"{where} (labels)")
    train = StreamedSplit(train_rows, train_y, scale)
    if test_rows is None:
        return train
    if tuple(test_rows.row_shape) != tuple(train_rows.row_shape):
        raise DataError(f"{where}: train points have shape {tuple(train_rows.row_shape)} "
                        f"but test points {tuple(test_rows.row_shape)}")
    if (train_labels is None) != (test_labels is None):
        raise DataError(f"{where}: labels for one split only; give both 'train_y' and 'test_y', or neither")
    test_y = None if test_labels is None else as_labels(test_labels, len(test_rows), f"{where} (test labels)")
    return train, StreamedSplit(test_rows, test_y, scale)


#: the [data] keys that are a source's options where its signature takes them (the others are pyrovae's)
SOURCE_KEYS = ("path", "download", "key", "label_key", "scale")


def source_options(name: str, given: dict) -> dict:
    """The options a source gets: of the common keys those it takes (one set that it does not take is
    one line), and every other key, checked against its signature."""
    takes = DATASETS.options(name)
    options = {}
    for key, value in given.items():
        if value is None or (key == "download" and key not in takes):
            continue
        if key in SOURCE_KEYS and key not in takes:
            raise DataError(f"data.{key}: data set {shown(name)} takes no {key} (its options: "
                            f"{', '.join(sorted(takes)) or 'none'})")
        options[key] = value
    missing = [k for k, p in takes.items() if p.default is inspect.Parameter.empty and k not in options]
    if missing:
        raise DataError(f"data.{missing[0]}: required by data set {shown(name)}")
    return options
