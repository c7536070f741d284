"""Splits: the seam every path from the data to a model goes through.

A :class:`Split` is N points of one shape (and their labels, if any), read as float32:

- :meth:`~Split.read`: the points at a tensor of indices (one call per minibatch, not one per item);
- :meth:`~Split.chunks`: consecutive chunks, in order (evaluation, checks, the fingerprint);
- :meth:`~Split.plan`: the points of each minibatch of an epoch's plan (this rank's shard of it),
  read ahead through a ``torch.utils.data.DataLoader`` whose batch sampler is the plan
  (``num_workers`` processes, pinned memory), so that reading overlaps the step;
- :meth:`~Split.subset`: an index map onto the split (the held-out split is one, not a copy).

Two kinds, one contract:

- :class:`InMemorySplit`: a float32 tensor on the training device, read by ``index_select``
  (the fast case; small data sets, and any split that fits the memory there).
- :class:`StreamedSplit`: stored :class:`~pyrovae.data.rows.Rows` (a file on disk, a sparse
  matrix, a user's torch ``Dataset``) read per batch in their stored dtype, indices sorted for
  locality, then converted on the device: x = float32(stored) * scale. Memory stays flat in N:
  besides the batch, a split holds its index map (4 bytes a point where N < 2^31) and labels.

An in-memory split is a streamed one read once, by the same conversion: the two give the same
points bit for bit (``tests/test_streaming.py``).

A split can carry a fixed binarization (the test split's, :func:`pyrovae.load_dataset`):
``threshold`` maps x to 1[x > 0.5] wherever it is read; ``dynamic`` draws x ~ Bernoulli(x) once
with a generator seeded ``SPLIT_SEED`` over the points in order (the draws are sequential, so a
sweep in chunks gives the points of one draw over the whole split), which makes reading point i
a sweep over the points before it: a test split is read in order.
"""

import hashlib
import math
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from pyrovae.data.batch import Batch
from pyrovae.data.rows import Rows, TensorRows
from pyrovae.errors import DataError

#: points per chunk of a sweep (checks, the fingerprint, materializing a split in memory)
SWEEP_CHUNK = 4096
#: the most bytes (as float32) one chunk of a streamed sweep holds: wide points make chunks of fewer points
SWEEP_BYTES = 64 << 20


def sweep_rows(event_shape, size: int = SWEEP_CHUNK) -> int:
    """Points per chunk of a sweep over points of ``event_shape``: ``size``, or fewer where that
    many would take more than :data:`SWEEP_BYTES` (a million-feature row is 4 MB: 16 a chunk)."""
    return max(1, min(size, SWEEP_BYTES // max(1, math.prod(event_shape) * 4)))
#: the seed of the fixed binarizations and of the held-out split's permutation (never the run's)
SPLIT_SEED = 0
#: what uint8 values (pixels 0..255) are multiplied by, unless data.scale says otherwise
UINT8_SCALE = 1 / 255
#: data.binarize: a fresh Bernoulli draw of each grey level at every step (one fixed draw in the test
#: split), 1[x > 0.5], or the values as they are
BINARIZATIONS = ("dynamic", "threshold", "none")


def thresholded(x: torch.Tensor) -> torch.Tensor:
    """``threshold`` binarization: 1[x > 0.5]."""
    return (x > 0.5).float()


def default_scale(dtype: torch.dtype) -> float:
    """1/255 for uint8 (pixels 0..255 to [0, 1]), 1 for any other stored type."""
    return UINT8_SCALE if dtype == torch.uint8 else 1.0


def as_points(raw: torch.Tensor, scale: float, device=None) -> torch.Tensor:
    """Stored values as float32 points on ``device``: x = float32(stored) * scale (the one
    conversion, for every kind of split; the copy to the device goes first, in the stored dtype)."""
    x = raw if device is None else raw.to(device, non_blocking=raw.is_pinned())
    x = x.float()
    return x * scale if scale != 1.0 else x


class Split:
    """N points of ``event_shape`` and their labels, read as float32 (see the module docstring)."""

    #: ``(N,)`` int64 class labels on the split's device, or None
    labels: Optional[torch.Tensor] = None
    event_shape: tuple = ()
    device: torch.device = torch.device("cpu")

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.event_shape))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def nbytes(self) -> int:
        """Bytes of the split's points as float32 (what it holds in memory)."""
        return len(self) * math.prod(self.event_shape) * 4

    def read(self, index: torch.Tensor) -> torch.Tensor:
        """The points at ``index`` (a tensor of positions): ``(len(index), *event_shape)`` float32 on
        the split's device."""
        raise NotImplementedError

    def chunks(self, size: int = SWEEP_CHUNK) -> Iterator[torch.Tensor]:
        """The points in consecutive chunks of at most ``size``, in order."""
        raise NotImplementedError

    def batches(self, size: int) -> Iterator[Batch]:
        """The points and their labels as consecutive :class:`~pyrovae.Batch` chunks of at most ``size``."""
        start = 0
        for chunk in self.chunks(size):
            stop = start + chunk.shape[0]
            yield Batch(chunk, None if self.labels is None else self.labels[start:stop])
            start = stop

    def plan(self, indices: Iterable[torch.Tensor], num_workers: int = 0) -> Iterator[torch.Tensor]:
        """The points of each index tensor of ``indices`` (an epoch's minibatches), in order."""
        return (self.read(index) for index in indices)

    def subset(self, index) -> "Split":
        """The points at ``index`` as a split of their own (with their labels)."""
        raise NotImplementedError

    def to(self, device) -> "Split":
        raise NotImplementedError

    def binarized_as(self, mode: str) -> "Split":
        """The split with a fixed binarization (``none``, ``threshold``, ``dynamic``: module docstring)."""
        raise NotImplementedError

    def in_memory(self) -> "InMemorySplit":
        """The split as a float32 tensor on its device (read once, in chunks)."""
        raise NotImplementedError

    def standardized(self, standardization: "Standardization") -> "Split":
        """The split with every point mapped to (x - mean) / std per feature (``data.standardize``)."""
        raise NotImplementedError

    def __getitem__(self, key) -> torch.Tensor:
        """Points by position: an int, a slice, an index tensor or a boolean mask (as a tensor's rows)."""
        if isinstance(key, slice):
            return self.read(torch.arange(len(self))[key])
        if isinstance(key, int):
            return self.read(torch.tensor([key if key >= 0 else key + len(self)]))[0]
        key = torch.as_tensor(key)
        if key.dtype == torch.bool:
            key = key.nonzero().squeeze(-1)
        return self.read(key.reshape(-1))

    def sha256(self) -> str:
        """SHA-256 of the points as little-endian float32, in order (the same for the same values,
        whatever the file format or the kind of split), read in chunks."""
        digest = hashlib.sha256()
        for chunk in self.chunks():
            values = chunk.detach().to("cpu", torch.float32).numpy()
            digest.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).data)
        return digest.hexdigest()


def _labels_subset(labels, index):
    return None if labels is None else labels.index_select(0, torch.as_tensor(index, device=labels.device).long())


class InMemorySplit(Split):
    """A split held as one float32 tensor ``(N, *event_shape)`` on a device."""

    def __init__(self, tensor: torch.Tensor, labels: Optional[torch.Tensor] = None):
        self.tensor = tensor
        self.labels = labels
        self.event_shape = tuple(tensor.shape[1:])
        self.device = tensor.device

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def read(self, index: torch.Tensor) -> torch.Tensor:
        return self.tensor.index_select(0, index.to(self.device))  # a row copy per point: faster than indexing

    def chunks(self, size: int = SWEEP_CHUNK) -> Iterator[torch.Tensor]:
        return iter(self.tensor.split(size))

    def subset(self, index) -> "InMemorySplit":
        index = torch.as_tensor(index, device=self.device).long()
        return InMemorySplit(self.tensor.index_select(0, index), _labels_subset(self.labels, index))

    def to(self, device) -> "InMemorySplit":
        return InMemorySplit(self.tensor.to(device), None if self.labels is None else self.labels.to(device))

    def in_memory(self) -> "InMemorySplit":
        return self

    def binarized_as(self, mode: str) -> "Split":
        if mode == "none":
            return self
        return StreamedSplit(TensorRows(self.tensor.cpu()), self.labels, 1.0, None, mode, self.device).in_memory()

    def standardized(self, standardization: "Standardization") -> "InMemorySplit":
        return InMemorySplit(standardization.apply(self.tensor), self.labels)


class _PlanReader(torch.utils.data.Dataset):
    """A streamed split as a map-style Dataset whose ``__getitems__`` reads one minibatch (what a
    DataLoader with the epoch plan as its batch sampler calls, in workers or in process)."""

    def __init__(self, split: "StreamedSplit"):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i):
        return self.split.stored(np.asarray([i], dtype=np.int64))[0]

    def __getitems__(self, index):
        return self.split.stored(np.asarray(index, dtype=np.int64))


def _as_is(batch):
    return batch


class _PlanSampler:
    """The batch sampler of a streamed split's DataLoader: the minibatches it was last given (an
    epoch's plan, this rank's shard), so that one loader, and its workers, serve every epoch.
    Each is handed over as numpy indices when the loader asks for it (no second copy of the plan)."""

    def __init__(self):
        self.batches = []

    def __iter__(self):
        return (index.detach().cpu().numpy().astype(np.int64, copy=False) for index in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


#: minibatches each DataLoader worker reads ahead
PREFETCH = 4


class StreamedSplit(Split):
    """A split read from stored :class:`~pyrovae.data.rows.Rows` a batch at a time.

    :param Rows rows: the stored points.
    :param labels: ``(N_rows,)`` int64 labels of the rows, or None.
    :param float scale: x = float32(stored) * scale; None: 1/255 for uint8, else 1.
    :param index: positions into the rows (an index map: a held-out split), or None: all rows in order.
    :param str binarized: a fixed binarization, ``none``, ``threshold`` or ``dynamic`` (module docstring).
    """

    def __init__(self, rows: Rows, labels: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                 index: Optional[np.ndarray] = None, binarized: str = "none", device="cpu",
                 standardization: Optional["Standardization"] = None):
        if binarized not in BINARIZATIONS:
            raise ValueError(f"binarized = {binarized!r}: one of {BINARIZATIONS}")
        self.rows, self.index, self.binarized = rows, index, binarized
        #: (x - mean) / std after the conversion (``data.standardize``), or None
        self.standardization = standardization
        self.scale = default_scale(rows.dtype) if scale is None else float(scale)
        self.event_shape = tuple(rows.row_shape)
        self.device = torch.device(device)
        self.row_labels = labels  # of the rows (the index map selects)
        self._loaders = {}
        self.labels = None if labels is None else (labels if index is None else _labels_subset(labels, index))
        if self.labels is not None:
            self.labels = self.labels.to(self.device)

    def __len__(self) -> int:
        return len(self.rows) if self.index is None else len(self.index)

    @property
    def where(self) -> str:
        return self.rows.where

    def _positions(self, index: np.ndarray) -> np.ndarray:
        return index if self.index is None else self.index[index].astype(np.int64)

    def stored(self, index: np.ndarray) -> torch.Tensor:
        """The stored values at positions ``index`` (numpy int64), read in the rows' order."""
        positions = self._positions(index)
        if len(positions) < 2 or np.all(positions[1:] > positions[:-1]):
            return self.rows.take(positions)
        order = np.argsort(positions, kind="stable")
        ordered = positions[order]
        if np.all(ordered[1:] > ordered[:-1]):  # distinct (an epoch's minibatch): rows put back in place
            rows = self.rows.take(ordered).numpy()
            out = np.empty_like(rows)
            out[order] = rows  # numpy's row copy: several times faster than torch's on uint8
            return torch.from_numpy(out)
        unique, inverse = np.unique(positions, return_inverse=True)
        return self.rows.take(unique).index_select(0, torch.from_numpy(inverse.reshape(-1)))

    def _finish(self, raw: torch.Tensor) -> torch.Tensor:
        x = as_points(raw, self.scale, self.device)
        if self.standardization is not None:
            x = self.standardization.apply(x)
        return thresholded(x) if self.binarized == "threshold" else x

    def read(self, index: torch.Tensor) -> torch.Tensor:
        index = index.detach().cpu().numpy().astype(np.int64).reshape(-1)
        if len(index) and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"{self.where}: index out of range for {len(self)} points")
        if self.binarized == "dynamic":  # a sweep up to the last point asked for (module docstring)
            want = int(index.max()) + 1 if len(index) else 0
            head = torch.cat(list(self._sweep(SWEEP_CHUNK, want))) if want else \
                torch.empty((0, *self.event_shape), device=self.device)
            return head.index_select(0, torch.from_numpy(index).to(self.device))
        return self._finish(self.stored(index))

    def _range(self, start: int, stop: int) -> torch.Tensor:
        if self.index is None:
            return self.rows.range(start, stop)
        return self.stored(np.arange(start, stop, dtype=np.int64))

    def _sweep(self, size: int, stop: Optional[int] = None) -> Iterator[torch.Tensor]:
        stop = len(self) if stop is None else stop
        size = sweep_rows(self.event_shape, size)  # never a chunk beyond SWEEP_BYTES, whatever the caller asks
        generator = torch.Generator().manual_seed(SPLIT_SEED) if self.binarized == "dynamic" else None
        for start in range(0, stop, size):
            raw = self._range(start, min(start + size, stop))
            if generator is None:
                yield self._finish(raw)
            else:  # drawn on the CPU, in order: one draw over the whole split
                yield torch.bernoulli(as_points(raw, self.scale), generator=generator).to(self.device)

    def chunks(self, size: int = SWEEP_CHUNK) -> Iterator[torch.Tensor]:
        return self._sweep(size)

    def plan(self, indices: Iterable[torch.Tensor], num_workers: int = 0) -> Iterator[torch.Tensor]:
        if self.binarized == "dynamic":
            return super().plan(indices, num_workers)
        if num_workers not in self._loaders:  # one per split: its workers are started once, kept across epochs
            sampler = _PlanSampler()
            loader = torch.utils.data.DataLoader(
                _PlanReader(self), batch_sampler=sampler, collate_fn=_as_is, num_workers=num_workers,
                pin_memory=self.device.type == "cuda", prefetch_factor=PREFETCH if num_workers else None,
                persistent_workers=num_workers > 0)
            self._loaders[num_workers] = sampler, loader
        sampler, loader = self._loaders[num_workers]
        sampler.batches = list(indices)
        return (self._finish(raw) for raw in loader)

    def __getstate__(self):  # what a DataLoader worker started by spawn gets: the rows, not the loaders
        return {**self.__dict__, "_loaders": {}}

    def subset(self, index) -> "StreamedSplit":
        index = np.asarray(torch.as_tensor(index).cpu().numpy(), dtype=np.int64).reshape(-1)
        positions = self._positions(index)
        compact = positions.astype(np.int32) if len(self.rows) < 2**31 else positions
        return self._with(index=compact)

    def to(self, device) -> "StreamedSplit":
        return self._with(device=device)

    def binarized_as(self, mode: str) -> "StreamedSplit":
        return self._with(binarized=mode)

    def standardized(self, standardization: "Standardization") -> "StreamedSplit":
        return self._with(standardization=standardization)

    def _with(self, **changes) -> "StreamedSplit":
        """This split over the same rows, with ``changes`` to its index map, binarization, device or
        standardization."""
        given = dict(labels=self.row_labels, scale=self.scale, index=self.index, binarized=self.binarized,
                     device=self.device, standardization=self.standardization)
        return StreamedSplit(self.rows, **{**given, **changes})

    def in_memory(self) -> InMemorySplit:
        out = torch.empty((len(self), *self.event_shape), dtype=torch.float32, device=self.device)
        start = 0
        for chunk in self.chunks():
            out[start:start + chunk.shape[0]] = chunk
            start += chunk.shape[0]
        return InMemorySplit(out, self.labels)


class Standardization:
    """Per-feature standardization, x -> (x - mean) / std (``data.standardize``), with the mean and
    the standard deviation of the training split: features that do not vary (std 0) are only
    centred. :meth:`undo` maps a model's outputs (samples, reconstructions) back to the data's
    units for figures."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean = mean.detach().to(torch.float32)
        self.std = torch.where(std > 0, std, torch.ones_like(std)).detach().to(torch.float32)

    @classmethod
    def of(cls, split: Split) -> "Standardization":
        """The mean and standard deviation (population) of each feature over ``split``, in one sweep
        of float64 chunk statistics combined exactly (Chan et al.'s pairwise update): never the
        split whole."""
        count, mean, m2 = 0, None, None
        for chunk in split.chunks():
            values = chunk.detach().to("cpu", torch.float64)
            n = values.shape[0]
            if n == 0:
                continue
            chunk_mean = values.mean(0)
            chunk_m2 = ((values - chunk_mean) ** 2).sum(0)
            if mean is None:
                count, mean, m2 = n, chunk_mean, chunk_m2
                continue
            delta, total = chunk_mean - mean, count + n
            mean = mean + delta * (n / total)
            m2 = m2 + chunk_m2 + delta ** 2 * (count * n / total)
            count = total
        if mean is None:
            raise DataError("data.standardize: the training split is empty")
        return cls(mean, (m2 / count).sqrt())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def undo(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def as_record(self) -> dict:
        """Plain lists (what the checkpoint's data record keeps)."""
        return {"mean": self.mean.reshape(-1).tolist(), "std": self.std.reshape(-1).tolist()}

    @classmethod
    def from_record(cls, record: dict, event_shape) -> "Standardization":
        shape = tuple(event_shape)
        return cls(torch.tensor(record["mean"], dtype=torch.float32).reshape(shape),
                   torch.tensor(record["std"], dtype=torch.float32).reshape(shape))


def as_split(points, labels: Optional[torch.Tensor] = None, where: str = "data") -> Split:
    """A split from a :class:`Split` as it is, or from a float32 tensor (in memory, as it is)."""
    if isinstance(points, Split):
        return points
    if not isinstance(points, torch.Tensor):
        raise DataError(f"{where}: expected a tensor or a pyrovae Split, got {type(points).__name__}")
    if points.dtype != torch.float32:
        return StreamedSplit(TensorRows(points, where), labels, device=points.device).in_memory()
    return InMemorySplit(points, labels)
