"""Data sets: a :class:`Dataset` holds a training and a test split (and a validation split where
asked), each a :class:`~pyrovae.data.splits.Split` held in memory on the training device when it
fits or streamed from disk a minibatch at a time (a ``DataLoader`` over the epoch's plan, with
``data.num_workers`` readers), and :data:`DATASETS` names the sources.

The sources by ``[data] name`` are :data:`pyrovae.data.catalog.DATASETS`.

Labels (class numbers 0..C-1) come with digits, MNIST and files that hold them; they reach a
model as :class:`Batch` ``.y``. ``labeled = K`` keeps K training labels, balanced per class,
for semi-supervised families (``Batch.labeled`` marks them).

Binarization (for Bernoulli likelihoods): ``dynamic`` keeps grey levels and draws
x ~ Bernoulli(grey) each time a training batch is drawn (the test split is binarized once,
with a fixed seed); ``threshold`` sets x = 1[grey > 0.5]; ``none`` keeps the values.
Splits without a standard test set hold out ``test_fraction`` of the points, chosen by a
fixed permutation (the same for every run).
"""

import math
import os
from typing import Optional

import numpy as np
import torch

from pyrovae.data.batch import Batch
from pyrovae.data.budget import check_index_fits
from pyrovae.data.catalog import DATASETS, source_options
from pyrovae.data.formats import _numeric_tensor, as_labels
from pyrovae.data.rows import DatasetRows, TensorRows
from pyrovae.data.splits import (
    BINARIZATIONS,
    SPLIT_SEED,
    InMemorySplit,
    Split,
    Standardization,
    StreamedSplit,
    as_split,
    thresholded,
)
from pyrovae.devices import available_bytes, format_bytes
from pyrovae.errors import ConfigError, DataError, PyrovaeError, one_line, shown

DEFAULT_BINARIZE = {"digits": "dynamic", "mnist": "dynamic", "fashion_mnist": "dynamic", "kmnist": "dynamic"}


class Dataset:
    """A data set's two splits (:class:`~pyrovae.data.splits.Split`: in memory, or streamed from disk).

    :param str name: where it came from.
    :param train: the training points: a float32 tensor ``(N_train, *event_shape)`` (held in
        memory as it is; another dtype is converted, uint8 times 1/255) or a ``Split``.
    :param test: the test points, likewise, fixed (already binarized).
    :param str binarize: ``dynamic`` makes :meth:`train_points` draw Bernoulli pixels.
    :param torch.Tensor train_y: ``(N_train,)`` int64 labels, or None (a Split carries its own).
    :param torch.Tensor test_y: ``(N_test,)`` int64 labels, or None.
    :param torch.Tensor labeled: ``(N_train,)`` bool, the training labels a model may use
        (``data.labeled = K`` keeps K, balanced per class), or None: all of them.
    :param validation: the validation points (a tensor or a ``Split``, fixed like the test
        points), held out of the training split (``data.validation_fraction``), or None.

    ``data.train`` and ``data.test`` are the points: the tensor of a split held in memory, else
    the streamed split itself, read like a tensor's rows (``data.test[:10]``, ``len(data.test)``).
    Everything in pyrovae reads ``train_split`` and ``test_split``.
    """

    def __init__(self, name: str, train, test, binarize: str = "none", train_y: Optional[torch.Tensor] = None,
                 test_y: Optional[torch.Tensor] = None, labeled: Optional[torch.Tensor] = None, validation=None,
                 standardization: Optional[Standardization] = None):
        self.name, self.binarize, self.labeled = name, binarize, labeled
        #: the per-feature standardization every split went through (``data.standardize``), or None;
        #: ``standardization.undo`` maps a model's outputs back to the data's units
        self.standardization = standardization
        #: processes that read a streamed split's batches ahead of the step (data.num_workers)
        self.num_workers = 0
        self.train_split = _with_labels(as_split(train, where=f"data set {name!r} (train)"), train_y)
        self.test_split = _with_labels(as_split(test, where=f"data set {name!r} (test)"), test_y)
        #: the validation points (early stopping, the best checkpoint, ``validation_elbo``), or None
        self.validation_split = None if validation is None else as_split(validation,
                                                                          where=f"data set {name!r} (validation)")

    @property
    def splits(self) -> dict:
        """The splits by name: ``train``, ``test`` and, where there is one, ``validation``."""
        out = {"train": self.train_split, "test": self.test_split}
        return out if self.validation_split is None else {**out, "validation": self.validation_split}

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={type(self.train_split).__name__}{tuple(self.train_split.shape)}, "
                f"test={type(self.test_split).__name__}{tuple(self.test_split.shape)}, binarize={self.binarize!r})")

    @property
    def train(self):
        return _points(self.train_split)

    @property
    def test(self):
        return _points(self.test_split)

    @property
    def train_y(self) -> Optional[torch.Tensor]:
        return self.train_split.labels

    @property
    def test_y(self) -> Optional[torch.Tensor]:
        return self.test_split.labels

    @property
    def streamed(self) -> bool:
        """Whether a split is read from its storage a batch at a time (not held in memory)."""
        return not all(isinstance(s, InMemorySplit) for s in self.splits.values())

    @property
    def event_shape(self) -> tuple:
        return tuple(self.train_split.event_shape)

    @property
    def num_train(self) -> int:
        return len(self.train_split)

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
        if all(s.device == torch.device(device) for s in self.splits.values()):
            return self
        out = Dataset(self.name, self.train_split.to(device), self.test_split.to(device), self.binarize,
                      labeled=None if self.labeled is None else self.labeled.to(device),
                      validation=None if self.validation_split is None else self.validation_split.to(device),
                      standardization=self.standardization)
        out.num_workers = self.num_workers
        return out

    def train_batch(self, index: torch.Tensor, uniform: torch.Tensor = None, points: torch.Tensor = None) -> Batch:
        """The training :class:`Batch` at ``index``: points (see :meth:`train_points`), labels and their mask."""
        y = None if self.train_y is None else self.train_y.index_select(0, index)
        labeled = None if self.labeled is None else self.labeled.index_select(0, index)
        return Batch(self.train_points(index, uniform, points), y, labeled)

    def test_batches(self, size: int):
        """The test split as consecutive :class:`Batch` chunks of at most ``size`` (every test label visible)."""
        return self.test_split.batches(size)

    def test_head(self, n: int) -> Batch:
        """The first ``n`` test points (or all, if fewer) as one :class:`Batch`."""
        index = torch.arange(min(n, len(self.test_split)), device=self.test_split.device)
        y = None if self.test_y is None else self.test_y.index_select(0, index)
        return Batch(self.test_split.read(index), y)

    @property
    def test_batch(self) -> Batch:
        """The whole test split as one :class:`Batch` (read into memory if it is streamed)."""
        return self.test_head(len(self.test_split))

    def train_points(self, index: torch.Tensor, uniform: torch.Tensor = None,
                     points: torch.Tensor = None) -> torch.Tensor:
        """Training points at ``index`` (a tensor on the data's device; ``points``: those already
        read), binarized if dynamic: x = 1[u < grey] with u ~ U(0, 1), drawn here or given as
        ``uniform`` (shaped like the batch)."""
        x = self.train_split.read(index) if points is None else points
        if self.binarize != "dynamic":
            return x
        return ((torch.rand_like(x) if uniform is None else uniform) < x).to(x.dtype)


def _points(split: Split):
    return split.tensor if isinstance(split, InMemorySplit) else split


def _with_labels(split: Split, labels: Optional[torch.Tensor]) -> Split:
    if labels is None:
        return split
    if len(labels) != len(split):
        raise DataError(f"labels: {len(labels)} for {len(split)} points; give one label per point")
    split.labels = labels.to(split.device)
    return split


def binarize_split(x: torch.Tensor, mode: str, seed: int = SPLIT_SEED) -> torch.Tensor:
    """Fixed binarization of a split: a seeded Bernoulli draw (``dynamic``), a threshold, or none."""
    if mode == "threshold":
        return thresholded(x)
    if mode == "dynamic":
        return torch.bernoulli(x, generator=torch.Generator(device=x.device).manual_seed(seed))
    return x


def check_values(split: Split, where: str, binarize: str = "none") -> None:
    """The points are finite and, when they are to be binarized, in [0, 1]: checked chunk by
    chunk (a streamed split is read once), each problem one DataError line. Values that the
    stored numbers make finite only before ``data.scale`` (or the float32 conversion) are blamed
    on that, not on the data."""
    streamed = isinstance(split, StreamedSplit)
    if streamed and not split.rows.dtype.is_floating_point and split.binarized == "none":
        low, high = _integer_range(split.rows.dtype)  # the stored type bounds the values: nothing to read
        in_range = math.isfinite(float(torch.tensor(max(-low, high) * split.scale, dtype=torch.float32)))
        if in_range and (binarize == "none" or (split.scale * low >= 0 and split.scale * high <= 1)):
            return
    start = 0
    for chunk in split.chunks():
        if not bool(torch.isfinite(chunk).all()):
            raise DataError(_non_finite_cause(split, where, start, chunk.shape[0]) if streamed
                            else f"{where}: contains NaN or infinite values")
        if binarize != "none" and bool(((chunk < 0) | (chunk > 1)).any()):
            raise DataError(f"data.binarize = {shown(binarize)}: {where} has values outside [0, 1]; rescale them "
                            "or use 'none'")
        start += chunk.shape[0]


def _non_finite_cause(split: StreamedSplit, where: str, start: int, size: int) -> str:
    """What makes points ``start .. start + size`` of a streamed split non-finite: the stored values
    themselves, or (stored values finite) ``data.scale`` or float32's range."""
    raw = split.stored(np.arange(start, start + size, dtype=np.int64)).double()
    if not bool(torch.isfinite(raw).all()):
        return f"{where}: contains NaN or infinite values"
    if split.scale != 1.0 and bool(torch.isfinite(raw.float()).all()):
        return (f"data.scale = {split.scale:g}: makes finite values of {where} infinite (as float32, at most "
                f"{torch.finfo(torch.float32).max:.3g}); choose a smaller data.scale")
    return (f"{where}: holds values beyond float32's range ({torch.finfo(torch.float32).max:.3g}), which pyrovae "
            "trains in; rescale them (data.scale)")


def _integer_range(dtype: torch.dtype):
    if dtype == torch.bool:
        return 0, 1
    info = torch.iinfo(dtype)
    return info.min, info.max


def holdout_split(x, test_fraction: float, where: str, y: Optional[torch.Tensor] = None):
    """Split x (a tensor or a Split; and its labels y) by a fixed permutation into ``(train,
    test, train_y, test_y)`` with ``round(test_fraction * N)`` test points (index maps of a Split)."""
    n = len(x)
    n_test = int(round(test_fraction * n))
    if n_test < 1 or n_test >= n:
        raise DataError(f"{where}: test_fraction = {test_fraction} of {n} points leaves an empty split")
    check_index_fits(n, where)  # before the permutation is drawn: a file may declare rows it does not hold
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    train, test = perm[n_test:], perm[:n_test]
    if isinstance(x, Split):
        return x.subset(train), x.subset(test), None, None
    return x[train], x[test], (None if y is None else y[train]), (None if y is None else y[test])


#: the permutation that holds out the validation split (data.validation_fraction): fixed, apart from the test split's
VALIDATION_SEED = SPLIT_SEED + 2


def validation_holdout(train: Split, fraction: float, where: str):
    """``(train, validation)``: ``round(fraction * N)`` of the training split's points held out by a
    fixed permutation (the same for every run and seed), each an index map of ``train`` with its labels."""
    n = len(train)
    n_val = int(round(fraction * n))
    if n_val < 1 or n_val >= n:
        raise DataError(f"{where}: validation_fraction = {fraction} of {n} training points leaves an empty split")
    check_index_fits(n, where)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    # each part in the file's order: a sweep over it (checks, fingerprint, scores) reads runs of rows
    return train.subset(perm[n_val:].sort().values), train.subset(perm[:n_val].sort().values)


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


#: the most reader processes a streamed split may start (data.num_workers): each holds a copy of
#: the reading state and decodes chunks of its own
MAX_NUM_WORKERS = 64


def check_num_workers(value, where: str = "data.num_workers") -> None:
    """``num_workers`` is a whole number in [0, :data:`MAX_NUM_WORKERS`]; else one line."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_NUM_WORKERS:
        raise DataError(f"{where} = {shown(value)}: must be a whole number in [0, {MAX_NUM_WORKERS}] (reader "
                        "processes; each costs memory and a core)")


def check_data_options(binarize: str, test_fraction, validation_fraction, in_memory, num_workers,
                       standardize=False, labeled=None) -> None:
    """The ``[data]`` rules that hold for every source, in one place (``DataConfig.check`` and
    :func:`load_dataset` call it): ``binarize`` (resolved: the data set's default in place of None)
    one of :data:`~pyrovae.data.splits.BINARIZATIONS`, ``test_fraction`` in (0, 1),
    ``validation_fraction`` in [0, 1), ``in_memory`` one of :data:`IN_MEMORY`, ``num_workers``,
    ``standardize`` a bool and only with ``binarize = "none"``, ``labeled`` None or >= 1. One
    :class:`DataError` line each."""
    if binarize not in BINARIZATIONS:
        raise DataError(f"data.binarize = {shown(binarize)}: valid: {', '.join(BINARIZATIONS)}")
    if not _is_number(test_fraction) or not 0 < test_fraction < 1:
        raise DataError(f"data.test_fraction = {shown(test_fraction)}: must be in (0, 1)")
    if not _is_number(validation_fraction) or not 0 <= validation_fraction < 1:
        raise DataError(f"data.validation_fraction = {shown(validation_fraction)}: must be in [0, 1)")
    if not isinstance(in_memory, (str, bool)) or in_memory not in IN_MEMORY:
        raise DataError(f"data.in_memory = {shown(in_memory)}: valid: \"auto\", true, false")
    check_num_workers(num_workers)
    if standardize not in (True, False) or not isinstance(standardize, (bool, int)):
        raise DataError(f"data.standardize = {shown(standardize)}: valid: true, false")
    if standardize and binarize != "none":
        raise DataError(f"data.standardize = true with data.binarize = {shown(binarize)}: standardized values are "
                        "not grey levels; set data.binarize = \"none\" (and a likelihood for real values, such as "
                        "gaussian)")
    if labeled is not None and (isinstance(labeled, bool) or not isinstance(labeled, int) or labeled < 1):
        raise DataError(f"data.labeled = {shown(labeled)}: must be a whole number >= 1")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: ``data.in_memory = "auto"`` keeps the splits on the training device when their float32 points
#: take at most this share of the memory the process may still use there, and streams them otherwise
IN_MEMORY_SHARE = 0.5
IN_MEMORY = ("auto", True, False)


def _streamed_bytes(data: Dataset) -> int:
    return sum(s.nbytes for s in data.splits.values() if not isinstance(s, InMemorySplit))


def placed(data: Dataset, in_memory="auto", device="cpu", where: str = "data") -> Dataset:
    """The data set on ``device``, each streamed split read into memory there or left streamed:
    ``in_memory = True`` reads them (refused in one line if their float32 points do not fit the
    memory the process may still use, the cgroup's limit included), ``False`` streams them,
    ``"auto"`` reads them when they take at most :data:`IN_MEMORY_SHARE` of that memory (on the
    CPU, of its share among the ``LOCAL_WORLD_SIZE`` processes torchrun started on the machine)."""
    if in_memory not in IN_MEMORY:
        raise DataError(f"data.in_memory = {shown(in_memory)}: valid: \"auto\", true, false")
    need, room = _streamed_bytes(data), available_bytes(device)
    if torch.device(device).type == "cpu":  # torchrun's processes on a machine share its memory
        room //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    if in_memory is True and need > room:
        shape = tuple(data.train_split.shape)
        raise DataError(f"{where}: {len(data.train_split) + len(data.test_split)} points of shape {shape[1:]} need "
                        f"about {format_bytes(need)} in memory to load as float32, more than the {format_bytes(room)} "
                        "this process may still use; set data.in_memory = \"auto\" or false to stream them "
                        "from disk")
    keep = in_memory is True or (in_memory == "auto" and need <= IN_MEMORY_SHARE * room)
    splits = {k: s.to(device).in_memory() if keep else s.to(device) for k, s in data.splits.items()}
    out = Dataset(data.name, splits["train"], splits["test"], data.binarize,
                  labeled=None if data.labeled is None else data.labeled.to(device),
                  validation=splits.get("validation"), standardization=data.standardization)
    out.num_workers = data.num_workers
    return out


def as_dataset(data, test=None, test_fraction: float = 0.1, where: str = "fit: data", in_memory="auto",
               device="cpu", num_workers: int = 0) -> Dataset:
    """What :func:`pyrovae.fit` trains on: a :class:`Dataset` as it is, or a map-style
    ``torch.utils.data.Dataset`` whose items are ``x`` or ``(x, y)`` (``y`` a class number), or a
    :class:`~pyrovae.data.splits.Split`. ``test`` is the held-out set (of the same kinds); without
    it, ``test_fraction`` of the points are held out by a fixed permutation (an index map). A torch
    Dataset is read a batch at a time (:class:`~pyrovae.data.rows.DatasetRows`: values as
    :func:`load_dataset` reads a file's, uint8 pixels times 1/255), then held in memory or
    streamed as ``in_memory`` says (:func:`placed`)."""
    if isinstance(data, Dataset):
        if test is not None:
            raise DataError(f"{where}: a test set goes with a torch Dataset; a pyrovae Dataset holds its own")
        return data
    if not 0 < test_fraction < 1:
        raise DataError(f"{where}: test_fraction = {test_fraction}: must be in (0, 1)")
    check_num_workers(num_workers, "num_workers")
    train = _as_split_of(data, where)
    check_index_fits(len(train), where)  # every epoch draws a permutation of the training points
    if test is None:
        train, test_split, _, _ = holdout_split(train, test_fraction, where)
    else:
        test_split = _as_split_of(test, f"{where} (test)")
        if tuple(test_split.event_shape) != tuple(train.event_shape):
            raise DataError(f"{where}: test points have shape {tuple(test_split.event_shape)}, the training points "
                            f"{tuple(train.event_shape)}")
        if (train.labels is None) != (test_split.labels is None):
            raise DataError(f"{where}: labels in one split only; give (x, y) items in both, or x in both")
    name = getattr(data, "name", None) if isinstance(getattr(data, "name", None), str) else type(data).__name__
    out = Dataset(name, train, test_split, "none")
    out.num_workers = num_workers
    return out if in_memory is None else placed(out, in_memory, device, where)


def _as_split_of(data, where: str) -> Split:
    """A split of a torch Dataset (a ``TensorDataset``'s tensors as they are, in their dtype) or a Split."""
    if isinstance(data, Split):
        return data
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) in (1, 2):
        rows = TensorRows(_numeric_tensor(data.tensors[0], where), where)
        labels = data.tensors[1] if len(data.tensors) == 2 else None
        return StreamedSplit(rows, None if labels is None else as_labels(labels, len(rows), f"{where} (labels)"))
    if not isinstance(data, torch.utils.data.Dataset) or not hasattr(data, "__getitem__") \
            or isinstance(data, torch.utils.data.IterableDataset):
        raise DataError(f"{where} must be a pyrovae Dataset or a map-style torch Dataset, got {type(data).__name__}")
    rows = DatasetRows(data, where)
    labels = rows.labels()
    return StreamedSplit(rows, None if labels is None else as_labels(labels, len(rows), f"{where} (labels)"))


def load_dataset(name: str = "digits", path: Optional[str] = None, binarize: Optional[str] = None,
                 test_fraction: float = 0.1, download: bool = True, device="cpu",
                 labeled: Optional[int] = None, key: Optional[str] = None, label_key: Optional[str] = None,
                 scale: Optional[float] = None, in_memory="auto", num_workers: int = 0,
                 validation_fraction: float = 0.0, standardize: bool = False, **options) -> Dataset:
    """Load a data set by name (:data:`DATASETS`; see the module docstring) onto ``device``, with
    its labels where the source has them; ``labeled = K`` keeps K training labels (balanced per
    class, a fixed choice) and masks the rest. ``path``, ``download``, ``key``, ``label_key``,
    ``scale`` and any other ``options`` go to the source that takes them (for ``file``: ``key`` and
    ``label_key`` name the points' and the labels' arrays in a file that holds several; ``scale``
    multiplies the values, by default 1/255 for uint8 pixels, so that 0..255 becomes [0, 1], and 1
    for any other type). A source without a test split has ``test_fraction`` of it held out.
    ``in_memory`` (``"auto"``, True, False) holds the splits in memory on ``device`` or streams
    them from their storage (:func:`placed`); ``num_workers`` processes read a streamed split's
    batches ahead of the step. ``validation_fraction`` of the training split is held out as a
    validation split (:func:`validation_holdout`: a fixed choice, binarized once like the test
    split); the label budget is then chosen from the points that remain for training.
    ``standardize``: every split mapped to (x - mean) / std per feature, with the mean and standard
    deviation of the training split (:class:`~pyrovae.data.splits.Standardization`, kept as
    ``Dataset.standardization``): for raw tables whose features have their own units."""
    DATASETS.get(name, "data.name")
    binarize = binarize or DEFAULT_BINARIZE.get(name, "none")
    check_data_options(binarize, test_fraction, validation_fraction, in_memory, num_workers, standardize, labeled)
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
    parts = result if isinstance(result, tuple) and len(result) in (2, 3) else (result,)
    data = as_dataset(parts[0], parts[-1] if len(parts) > 1 else None, test_fraction, where, in_memory=None)
    own_validation = _as_split_of(parts[1], f"{where} (validation split)") if len(parts) == 3 else None
    splits = (("train", data.train_split), ("validation", own_validation), ("test", data.test_split))
    for split_name, split in ((n, s) for n, s in splits if s is not None):
        if len(split) == 0:
            raise DataError(f"data: the {split_name} split of {shown(name)} is empty")
        if tuple(split.event_shape) != tuple(data.train_split.event_shape):
            raise DataError(f"{where}: {split_name} points have shape {tuple(split.event_shape)}, the training points "
                            f"{tuple(data.train_split.event_shape)}")
        check_values(split, f"{where} ({split_name} split)" if split_name != "train" else where, binarize)
    train, validation = data.train_split, None
    if own_validation is not None:  # the data set's own (static MNIST's): what its papers stop early on
        if validation_fraction:
            raise DataError(f"data.validation_fraction = {validation_fraction}: data set {shown(name)} has a "
                            f"validation split of its own ({len(own_validation)} points); leave "
                            "data.validation_fraction at 0")
        validation = own_validation.binarized_as(binarize)
    elif validation_fraction:
        train, validation = validation_holdout(train, validation_fraction, f"data set {shown(name)}")
        validation = validation.binarized_as(binarize)
    mask = None
    if labeled is not None:
        if train.labels is None:
            raise DataError(f"data.labeled = {labeled}: data set {shown(name)} has no labels")
        mask = choose_labeled(train.labels.cpu(), labeled)
    train = train.binarized_as("threshold") if binarize == "threshold" else train
    test, standardization = data.test_split.binarized_as(binarize), None
    if standardize:  # the training split's statistics, for every split
        standardization = Standardization.of(train)
        train, test = train.standardized(standardization), test.standardized(standardization)
        validation = None if validation is None else validation.standardized(standardization)
    out = Dataset(name, train, test, binarize, labeled=mask, validation=validation, standardization=standardization)
    out.num_workers = num_workers
    return placed(out, in_memory, device, where)
