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
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from .errors import DataError, needed_object, one_line, shown
from .safe_load import UnsafeFile, load_torch_file

DATASETS = ("digits", "mnist", "frey_face", "file")
BINARIZE = ("dynamic", "threshold", "none")
DEFAULT_BINARIZE = {"digits": "dynamic", "mnist": "dynamic", "frey_face": "none", "file": "none"}
FREY_FACE_URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"
SPLIT_SEED = 0  # the held-out split never depends on the training seed


@dataclass
class Batch:
    """What flows from the data to a model: a minibatch and what is known about it.

    :param torch.Tensor x: ``(M, *event_shape)`` the data points.
    :param torch.Tensor y: ``(M,)`` int64 class labels, or None where the data set has none.
    :param torch.Tensor labeled: ``(M,)`` bool, which of the labels the model may use (a
        semi-supervised budget, ``data.labeled``), or None: all of them.
    :param torch.Tensor weight: ``(M,)`` each point's weight in the minibatch's objective, or
        None: 1 each (see :func:`epoch_plan`; the loop applies it, a model never needs to).
    """

    x: torch.Tensor
    y: Optional[torch.Tensor] = None
    labeled: Optional[torch.Tensor] = None
    weight: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index) -> "Batch":
        """The points at ``index`` (a slice or an index tensor), with their labels."""
        return Batch(*(None if t is None else t[index] for t in (self.x, self.y, self.labeled, self.weight)))

    def split(self, size: int):
        """Consecutive chunks of at most ``size`` points."""
        return [self[i:i + size] for i in range(0, len(self), size)]

    def to(self, device) -> "Batch":
        return Batch(*(None if t is None else t.to(device) for t in (self.x, self.y, self.labeled, self.weight)))


def as_batch(batch) -> Batch:
    """A :class:`Batch` from a Batch or a plain tensor of data points."""
    return batch if isinstance(batch, Batch) else Batch(batch)


@dataclass
class Dataset:
    """A data set's two splits, as tensors on one device.

    :param str name: where it came from.
    :param torch.Tensor train: ``(N_train, *event_shape)`` float32.
    :param torch.Tensor test: ``(N_test, *event_shape)`` float32, fixed (already binarized).
    :param str binarize: ``dynamic`` makes :meth:`batch` draw Bernoulli pixels.
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

    def minibatch(self, index: torch.Tensor, uniform: torch.Tensor = None) -> Batch:
        """The training :class:`Batch` at ``index``: points (see :meth:`batch`), labels and their mask."""
        y = None if self.train_y is None else self.train_y.index_select(0, index)
        labeled = None if self.labeled is None else self.labeled.index_select(0, index)
        return Batch(self.batch(index, uniform), y, labeled)

    @property
    def test_batch(self) -> Batch:
        """The test split as one :class:`Batch` (every test label visible)."""
        return Batch(self.test, self.test_y)

    def batch(self, index: torch.Tensor, uniform: torch.Tensor = None) -> torch.Tensor:
        """Training points at ``index`` (a tensor on the data's device), binarized if dynamic:
        x = 1[u < grey] with u ~ U(0, 1), drawn here or given as ``uniform`` (shaped like the batch)."""
        x = self.train.index_select(0, index)  # a row copy per point: faster than advanced indexing
        if self.binarize != "dynamic":
            return x
        return ((torch.rand_like(x) if uniform is None else uniform) < x).to(x.dtype)


def epoch_order(n: int, seed: int, epoch: int, device="cpu") -> torch.Tensor:
    """The permutation of the N training points for an epoch: it depends on (seed, epoch) only,
    so a resumed run, or a run on K processes, sees the same batches."""
    generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator, device=device)


@dataclass
class Step:
    """One minibatch of an epoch: the training points' ``index``, their objective ``weight``
    (None: 1 each) and ``size``, the number of points the step's objective is an average over."""

    index: torch.Tensor
    weight: Optional[torch.Tensor]
    size: int


def epoch_plan(n: int, batch_size: int, seed: int, epoch: int, labeled: Optional[torch.Tensor] = None,
               labeled_per_batch: int = 0, labeled_weight: float = 1.0, device="cpu") -> List[Step]:
    """The minibatches of an epoch, from (seed, epoch) only (a resumed run, or K processes, see the same).

    By default the epoch's permutation in chunks of M. With ``labeled_per_batch = k`` and a label
    budget (``labeled``, the training mask), each minibatch is M - k points of the permutation
    plus k points drawn uniformly from the N_l labelled ones: a stratified estimate of the same
    full-data objective, J = sum_unlabelled f_i + sum_labelled f_i, which a semi-supervised
    family (m2) needs when labels are rare (100 of 60000 appear once an epoch each, and a
    minibatch of 200 holds one every three steps). Weights keep it unbiased: a permutation point
    that is labelled gets 0 (the labelled draws stand for it), the others 1, and each labelled
    draw (M - k) N_l / (k N), so that the weighted sum over a step estimates (M - k) / N of J.

    ``labeled_weight = w`` counts every labelled point w times (as if the labelled set were
    copied w times): the objective becomes sum_unlabelled f_i + w sum_labelled f_i. With
    w = N_unlabelled / N_labelled the labelled and the unlabelled data weigh the same, which is
    what semi-supervised reproductions do when they cycle the labelled set beside the unlabelled
    one in every step.
    """
    order = epoch_order(n, seed, epoch, device)
    if labeled is None or not (labeled_per_batch or labeled_weight != 1):
        return [Step(chunk, None, chunk.numel()) for chunk in order.split(batch_size)]
    if not labeled_per_batch:
        return [Step(chunk, 1 + (labeled_weight - 1) * labeled[chunk].float(), chunk.numel())
                for chunk in order.split(batch_size)]
    labelled = labeled.nonzero().squeeze(-1)
    generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch + 7_919)
    steps = []
    for chunk in order.split(batch_size - labeled_per_batch):
        draws = labelled[torch.randint(labelled.numel(), (labeled_per_batch,), generator=generator, device=device)]
        share = chunk.numel() * labelled.numel() / (labeled_per_batch * n)
        weight = torch.cat([(~labeled[chunk]).float(),
                            torch.full((labeled_per_batch,), labeled_weight * share, device=device)])
        steps.append(Step(torch.cat([chunk, draws]), weight, chunk.numel()))
    return steps


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


def _as_float_tensor(array, where: str) -> torch.Tensor:
    t = _numeric_tensor(array, where)
    if t.dim() < 2:
        raise DataError(f"{where}: expected an array of shape (N, ...) with one row per point, "
                        f"got shape {tuple(t.shape)}")
    if math.prod(t.shape[1:]) == 0:
        raise DataError(f"{where}: data points of shape {tuple(t.shape[1:])} hold no values")
    t = t.float()
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
        from .memory import available_bytes, format_bytes

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


def load_file(path: str):
    """A user's array file -> ``(train, test, train_y, test_y)`` (None where absent): one array
    (``.npy``, or the only array of an ``.npz`` / ``.pt`` besides its labels ``y``), or the
    arrays ``train`` and ``test`` with ``train_y`` and ``test_y``."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data.path = {shown(str(path))}: no such file")
    suffix = file.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(file, allow_pickle=False), None, None, None
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
    if "train" in arrays:
        return arrays["train"], arrays.get("test"), arrays.get("train_y"), arrays.get("test_y")
    points = [k for k in arrays if k != "y"]
    if len(points) == 1:
        return arrays[points[0]], None, arrays.get("y"), None
    raise DataError(f"data.path = {shown(str(path))}: holds {shown(sorted(arrays))}; expected one array (and "
                    "its labels 'y'), or 'train' and 'test' (and 'train_y', 'test_y')")


def load_dataset(name: str = "digits", path: Optional[str] = None, binarize: Optional[str] = None,
                 test_fraction: float = 0.1, download: bool = True, device="cpu",
                 labeled: Optional[int] = None) -> Dataset:
    """Load a data set by name (see the module docstring) onto ``device``, with its labels where
    the source has them; ``labeled = K`` keeps K training labels (balanced per class, a fixed
    choice) and masks the rest."""
    if name not in DATASETS:
        raise DataError(f"data.name = {shown(name)}: unknown data set; valid: {', '.join(DATASETS)}")
    binarize = binarize or DEFAULT_BINARIZE[name]
    if binarize not in BINARIZE:
        raise DataError(f"data.binarize = {shown(binarize)}: valid: {', '.join(BINARIZE)}")
    if not 0 < test_fraction < 1:
        raise DataError(f"data.test_fraction = {test_fraction}: must be in (0, 1)")
    train_y = test_y = None
    if name == "digits":
        x, y = load_digits()
        train, test, train_y, test_y = holdout_split(x, test_fraction, "data", y)
    elif name == "mnist":
        root = path or "data"
        (train, train_y), (test, test_y) = load_mnist(root, True, download), load_mnist(root, False, download)
    elif name == "frey_face":
        train, test, _, _ = holdout_split(load_frey_face(path or "data", download), test_fraction, "data")
    else:
        if not path:
            raise DataError("data.path: required when data.name = 'file' (a .npy, .npz or .pt file)")
        where = f"data.path = {shown(path)}"
        train_array, test_array, train_labels, test_labels = load_file(path)
        train = _as_float_tensor(train_array, where)
        if train_labels is not None:
            train_y = as_labels(train_labels, train.shape[0], f"{where} (labels)")
        if test_array is None:
            train, test, train_y, test_y = holdout_split(train, test_fraction, where, train_y)
        else:
            test = _as_float_tensor(test_array, f"{where} (test)")
            if test.shape[1:] != train.shape[1:]:
                raise DataError(f"{where}: train points have shape {tuple(train.shape[1:])} "
                                f"but test points {tuple(test.shape[1:])}")
            if (train_y is None) != (test_labels is None):
                raise DataError(f"{where}: labels for one split only; give both 'train_y' and 'test_y', or neither")
            if test_labels is not None:
                test_y = as_labels(test_labels, test.shape[0], f"{where} (test labels)")
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

