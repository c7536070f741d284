"""Data sets as tensors: each split is one float32 tensor ``(N, *event_shape)`` kept on the
training device, and minibatches are drawn by index (no DataLoader, no per-step host copies).

Sources, by ``[data] name``:

- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, grey levels 0..16 scaled to
  [0, 1]); needs no network: the embedded default.
- ``mnist``: MNIST through torchvision (``path`` is torchvision's root folder; 60000 / 10000).
- ``frey_face``: Frey Face, 1965 faces of 28x20 from the standard ``frey_rawface.mat``
  (``path`` is the file or its folder; downloaded there if missing and ``download``).
- ``file``: a user's ``.npy``, ``.npz`` or ``.pt`` file: one array ``(N, ...)`` (and its
  labels ``y``), or the arrays ``train`` and ``test`` (and ``train_y``, ``test_y``).
  ``data.key`` and ``data.label_key`` name the arrays in a file that holds several; uint8
  values (pixels 0..255) are multiplied by 1/255, other types by 1, unless ``data.scale`` says otherwise.

Labels (class numbers 0..C-1) come with digits, MNIST and files that hold them; they reach a
model as :class:`Batch` ``.y``. ``labeled = K`` keeps K training labels, balanced per class,
for semi-supervised families (``Batch.labeled`` marks them).

Binarization (for Bernoulli likelihoods): ``dynamic`` keeps grey levels and draws
x ~ Bernoulli(grey) each time a training batch is drawn (the test split is binarized once,
with a fixed seed); ``threshold`` sets x = 1[grey > 0.5]; ``none`` keeps the values.
Splits without a standard test set hold out ``test_fraction`` of the points, chosen by a
fixed permutation (the same for every run).
"""

import inspect
import math
import types
from dataclasses import dataclass
from typing import Optional

import torch

from pyrovae.data.batch import Batch
from pyrovae.data.sources import _as_float_tensor, _numeric_tensor, load_digits, load_file, load_frey_face, load_mnist
from pyrovae.devices import available_bytes, format_bytes
from pyrovae.errors import ConfigError, DataError, PyrovaeError, one_line, shown
from pyrovae.registry import Registry

BINARIZE = ("dynamic", "threshold", "none")
DEFAULT_BINARIZE = {"digits": "dynamic", "mnist": "dynamic", "frey_face": "none", "file": "none"}
SPLIT_SEED = 0  # the held-out split never depends on the training seed


@dataclass
class Dataset:
    """A data set's two splits, as tensors on one device.

    :param str name: where it came from.
    :param torch.Tensor train: ``(N_train, *event_shape)`` float32.
    :param torch.Tensor test: ``(N_test, *event_shape)`` float32, fixed (already binarized).
    :param str binarize: ``dynamic`` makes :meth:`train_points` draw Bernoulli pixels.
    :param torch.Tensor train_y: ``(N_train,)`` int64 labels, or None.
    :param torch.Tensor test_y: ``(N_test,)`` int64 labels, or None.
    :param torch.Tensor labeled: ``(N_train,)`` bool, the training labels a model may use
        (``data.labeled = K`` keeps K, balanced per class), or None: all of them.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    binarize: str = "none"
    train_y: Optional[torch.Tensor] = None
    test_y: Optional[torch.Tensor] = None
    labeled: Optional[torch.Tensor] = None

    @property
    def event_shape(self) -> tuple:
        return tuple(self.train.shape[1:])

    @property
    def num_train(self) -> int:
        return self.train.shape[0]

    @property
    def num_classes(self) -> Optional[int]:
        """The number of classes (labels are 0 .. C-1), or None without labels."""
        if self.train_y is None:
            return None
        top = int(self.train_y.max()) if self.train_y.numel() else -1
        if self.test_y is not None and self.test_y.numel():
            top = max(top, int(self.test_y.max()))
        return top + 1

    def to(self, device) -> "Dataset":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Dataset(self.name, self.train.to(device), self.test.to(device), self.binarize,
                       move(self.train_y), move(self.test_y), move(self.labeled))

    def train_batch(self, index: torch.Tensor, uniform: torch.Tensor = None) -> Batch:
        """The training :class:`Batch` at ``index``: points (see :meth:`train_points`), labels and their mask."""
        y = None if self.train_y is None else self.train_y.index_select(0, index)
        labeled = None if self.labeled is None else self.labeled.index_select(0, index)
        return Batch(self.train_points(index, uniform), y, labeled)

    @property
    def test_batch(self) -> Batch:
        """The test split as one :class:`Batch` (every test label visible)."""
        return Batch(self.test, self.test_y)

    def train_points(self, index: torch.Tensor, uniform: torch.Tensor = None) -> torch.Tensor:
        """Training points at ``index`` (a tensor on the data's device), binarized if dynamic:
        x = 1[u < grey] with u ~ U(0, 1), drawn here or given as ``uniform`` (shaped like the batch)."""
        x = self.train.index_select(0, index)  # a row copy per point: faster than advanced indexing
        if self.binarize != "dynamic":
            return x
        return ((torch.rand_like(x) if uniform is None else uniform) < x).to(x.dtype)


def binarize_split(x: torch.Tensor, mode: str, seed: int = SPLIT_SEED) -> torch.Tensor:
    """Fixed binarization of a split: a seeded Bernoulli draw (``dynamic``), a threshold, or none."""
    if mode == "threshold":
        return (x > 0.5).float()
    if mode == "dynamic":
        return torch.bernoulli(x, generator=torch.Generator(device=x.device).manual_seed(seed))
    return x


def _check_binarizable(x: torch.Tensor, name: str, mode: str):
    if mode != "none" and bool(((x < 0) | (x > 1)).any()):
        raise DataError(f"data.binarize = {shown(mode)}: {name} has values outside [0, 1]; rescale them or use 'none'")


def holdout_split(x: torch.Tensor, test_fraction: float, where: str, y: Optional[torch.Tensor] = None):
    """Split x (and its labels y) by a fixed permutation into ``(train, test, train_y, test_y)``
    with ``round(test_fraction * N)`` test points."""
    n = x.shape[0]
    n_test = int(round(test_fraction * n))
    if n_test < 1 or n_test >= n:
        raise DataError(f"{where}: test_fraction = {test_fraction} of {n} points leaves an empty split")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    train, test = perm[n_test:], perm[:n_test]
    return x[train], x[test], (None if y is None else y[train]), (None if y is None else y[test])


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


def choose_labeled(y: torch.Tensor, k: int, where: str = "data.labeled") -> torch.Tensor:
    """A mask keeping ``k`` labels, balanced per class (floor(k / C) each, one more for the first
    k mod C classes), chosen by a fixed permutation: the same for every run and seed."""
    classes = int(y.max()) + 1
    if not 1 <= k <= y.shape[0]:
        raise DataError(f"{where} = {k}: must be in [1, {y.shape[0]}] (the training split's size)")
    order = torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED + 1))
    mask = torch.zeros(y.shape[0], dtype=torch.bool)
    for c in range(classes):
        want = k // classes + (1 if c < k % classes else 0)
        members = order[y[order] == c]
        if members.numel() < want:
            raise DataError(f"{where} = {k}: class {c} has {members.numel()} training points, fewer than its "
                            f"share {want}")
        mask[members[:want]] = True
    return mask


#: bytes a data value needs in memory while a file is loaded: its float32 copy, the finite-value
#: check's mask and the held-out split's copy (the file itself is mapped, or already read)
LOAD_BYTES_PER_VALUE = 4 + 1 + 4


def check_fits_in_memory(arrays, where: str, device="cpu") -> None:
    """Refuse, in one line, arrays whose float32 copies (and the split's) would not fit in the
    memory the process may still use (the cgroup's limit included): a clear line, not a kill."""
    values = sum(math.prod(getattr(a, "shape", ())) for a in arrays)
    need = values * LOAD_BYTES_PER_VALUE
    room = available_bytes("cpu")
    if torch.device(device).type == "cuda":
        room = min(room, available_bytes(device) + need)  # the splits then move to the device
    if need > room:
        shape = tuple(getattr(arrays[0], "shape", ()))
        raise DataError(f"{where}: {shape[0] if shape else 0} points of shape {shape[1:]} need about "
                        f"{format_bytes(need)} in memory to load as float32, more than the {format_bytes(room)} "
                        "this process may still use; use a smaller file, or a machine with more memory (data are "
                        "loaded into memory whole)")


def as_dataset(data, test=None, test_fraction: float = 0.1, where: str = "fit: data") -> Dataset:
    """What :func:`pyrovae.fit` trains on: a :class:`Dataset` as it is, or a map-style
    ``torch.utils.data.Dataset`` whose items are ``x`` or ``(x, y)`` (``y`` a class number), read
    in batches through a ``DataLoader`` into a :class:`Dataset` (values as :func:`load_dataset`
    reads a file's: uint8 pixels times 1/255). ``test`` is the held-out set (a torch ``Dataset``
    too); without it, ``test_fraction`` of the points are held out by a fixed permutation. The
    size is checked against the memory the process may use first: data are held in memory."""
    if isinstance(data, Dataset):
        if test is not None:
            raise DataError(f"{where}: a test set goes with a torch Dataset; a pyrovae Dataset holds its own")
        return data
    if not isinstance(data, torch.utils.data.Dataset) or not hasattr(data, "__getitem__"):
        raise DataError(f"{where} must be a pyrovae Dataset or a map-style torch Dataset, got {type(data).__name__}")
    if not 0 < test_fraction < 1:
        raise DataError(f"{where}: test_fraction = {test_fraction}: must be in (0, 1)")
    train, train_y = _read_torch_dataset(data, where)
    if test is None:
        train, test_x, train_y, test_y = holdout_split(train, test_fraction, where, train_y)
    else:
        test_x, test_y = _read_torch_dataset(test, f"{where} (test)")
        if test_x.shape[1:] != train.shape[1:]:
            raise DataError(f"{where}: test points have shape {tuple(test_x.shape[1:])}, the training points "
                            f"{tuple(train.shape[1:])}")
        if (train_y is None) != (test_y is None):
            raise DataError(f"{where}: labels in one split only; give (x, y) items in both, or x in both")
    return Dataset(type(data).__name__, train, test_x, "none", train_y, test_y)


def _read_torch_dataset(data, where: str):
    """A map-style torch Dataset's points ``(N, ...)`` float32 and labels ``(N,)`` or None; a
    ``TensorDataset``'s tensors are taken as they are (no copy through a DataLoader)."""
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) in (1, 2):
        points = _as_float_tensor(data.tensors[0], where)
        labels = data.tensors[1] if len(data.tensors) == 2 else None
        return points, None if labels is None else as_labels(labels, len(points), f"{where} (labels)")
    n = len(data)
    if n == 0:
        raise DataError(f"{where}: the Dataset is empty")
    first = data[0]
    labelled = isinstance(first, (tuple, list))
    if labelled and len(first) != 2:
        raise DataError(f"{where}: items must be x or (x, y); got a {type(first).__name__} of {len(first)}")
    x0 = torch.as_tensor(first[0] if labelled else first)
    check_fits_in_memory([types.SimpleNamespace(shape=(n, *x0.shape))], where)
    xs, ys = [], []
    try:
        for batch in torch.utils.data.DataLoader(data, batch_size=1024, shuffle=False):
            xs.append(torch.as_tensor(batch[0] if labelled else batch))
            if labelled:
                ys.append(torch.as_tensor(batch[1]))
    except (RuntimeError, TypeError, ValueError) as e:  # ragged items, foreign types
        raise DataError(f"{where}: its items cannot be read as a batch ({type(e).__name__}: "
                        f"{one_line(str(e), 160)}); every item must be x, or (x, y), of one shape") from None
    points = _as_float_tensor(torch.cat(xs), where)
    labels = as_labels(torch.cat(ys), n, f"{where} (labels)") if labelled else None
    return points, labels


#: data sources by name (``[data] name``): each returns what :func:`pyrovae.fit` accepts (a
#: :class:`Dataset`, a map-style torch ``Dataset``, or a pair ``(train, test)`` of them), its
#: options the ``[data]`` table's other keys; register one with ``@pyrovae.DATASETS.register(name)``
DATASETS = Registry("data set")


@DATASETS.register("digits")
def digits():
    """scikit-learn's bundled 8x8 digits, with their labels (no download: the embedded default)."""
    return torch.utils.data.TensorDataset(*load_digits())


@DATASETS.register("mnist")
def mnist(path: str = "data", download: bool = True):
    """MNIST through torchvision (``path``: its root folder), 60000 / 10000, with labels."""
    return (torch.utils.data.TensorDataset(*load_mnist(path, True, download)),
            torch.utils.data.TensorDataset(*load_mnist(path, False, download)))


@DATASETS.register("frey_face")
def frey_face(path: str = "data", download: bool = True):
    """Frey Face from ``frey_rawface.mat`` (``path``: the file or its folder)."""
    return torch.utils.data.TensorDataset(load_frey_face(path, download))


@DATASETS.register("file")
def user_file(path: str, key: Optional[str] = None, label_key: Optional[str] = None, scale: Optional[float] = None):
    """A user's ``.npy``, ``.npz`` or ``.pt`` file (see the module docstring)."""
    where = f"data.path = {shown(path)}"
    train_array, test_array, train_labels, test_labels = load_file(path, key, label_key)
    check_fits_in_memory([a for a in (train_array, test_array) if a is not None], where)
    train = _as_float_tensor(train_array, where, scale)
    train_y = None if train_labels is None else as_labels(train_labels, train.shape[0], f"{where} (labels)")
    if test_array is None:
        return torch.utils.data.TensorDataset(*(t for t in (train, train_y) if t is not None))
    test = _as_float_tensor(test_array, f"{where} (test)", scale)
    if test.shape[1:] != train.shape[1:]:
        raise DataError(f"{where}: train points have shape {tuple(train.shape[1:])} "
                        f"but test points {tuple(test.shape[1:])}")
    if (train_y is None) != (test_labels is None):
        raise DataError(f"{where}: labels for one split only; give both 'train_y' and 'test_y', or neither")
    test_y = None if test_labels is None else as_labels(test_labels, test.shape[0], f"{where} (test labels)")
    return tuple(torch.utils.data.TensorDataset(*(t for t in pair if t is not None))
                 for pair in ((train, train_y), (test, test_y)))


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


def load_dataset(name: str = "digits", path: Optional[str] = None, binarize: Optional[str] = None,
                 test_fraction: float = 0.1, download: bool = True, device="cpu",
                 labeled: Optional[int] = None, key: Optional[str] = None, label_key: Optional[str] = None,
                 scale: Optional[float] = None, **options) -> Dataset:
    """Load a data set by name (:data:`DATASETS`; see the module docstring) onto ``device``, with
    its labels where the source has them; ``labeled = K`` keeps K training labels (balanced per
    class, a fixed choice) and masks the rest. ``path``, ``download``, ``key``, ``label_key``,
    ``scale`` and any other ``options`` go to the source that takes them (for ``file``: ``key`` and
    ``label_key`` name the points' and the labels' arrays in a file that holds several; ``scale``
    multiplies the values, by default 1/255 for uint8 pixels, so that 0..255 becomes [0, 1], and 1
    for any other type). A source without a test split has ``test_fraction`` of it held out."""
    DATASETS.get(name, "data.name")
    binarize = binarize or DEFAULT_BINARIZE.get(name, "none")
    if binarize not in BINARIZE:
        raise DataError(f"data.binarize = {shown(binarize)}: valid: {', '.join(BINARIZE)}")
    if not 0 < test_fraction < 1:
        raise DataError(f"data.test_fraction = {test_fraction}: must be in (0, 1)")
    given = dict(path=path, download=download, key=key, label_key=label_key, scale=scale, **options)
    try:
        _, chosen = DATASETS.split({"name": name, **source_options(name, given)}, "data")
    except ConfigError as e:
        raise DataError(str(e)) from None
    try:
        result = DATASETS.get(name)(**chosen)
    except PyrovaeError:
        raise
    except Exception as e:  # a plugin's source can fail in any way
        raise DataError(f"data set {shown(name)}: its source fails ({type(e).__name__}: {one_line(str(e), 200)})") \
            from None
    where = f"data.path = {shown(path)}" if path and "path" in DATASETS.options(name) else f"data set {shown(name)}"
    if isinstance(result, tuple) and len(result) == 2:
        data = as_dataset(result[0], result[1], test_fraction, where)
    else:
        data = as_dataset(result, None, test_fraction, where)
    train, test, train_y, test_y = data.train, data.test, data.train_y, data.test_y
    for split_name, split in (("train", train), ("test", test)):
        if split.shape[0] == 0:
            raise DataError(f"data: the {split_name} split of {shown(name)} is empty")
        _check_binarizable(split, f"the {split_name} split", binarize)
    mask = None
    if labeled is not None:
        if train_y is None:
            raise DataError(f"data.labeled = {labeled}: data set {shown(name)} has no labels")
        mask = choose_labeled(train_y, labeled)
    if binarize == "threshold":
        train = binarize_split(train, binarize)
    test = binarize_split(test, binarize)
    return Dataset(name, train, test, binarize, train_y, test_y, mask).to(device)


