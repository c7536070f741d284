"""The one thing that flows from the data to a model: :class:`Batch` (points, labels, mask, weights)."""

from dataclasses import dataclass
from typing import Optional

import torch


class NoData(torch.Tensor):
    """The ``x`` of a batch without data: a tensor whose shape, dtype and device are those of M
    points, and whose values cannot be read. Code that uses x for its shape (Pyro's examples:
    ``x.new_zeros(len(x), z_dim)``, ``x.reshape(-1, 784)``, ``obs=x``) runs; anything that reads
    its values (arithmetic, a network, a mask, ``x.sum()``) raises :class:`NeedsData`. So a model
    drawn from its prior is never run on made-up values: it runs, or it says that it needs data."""

    #: operations that read no values: their results are shapes, fresh tensors, or views that stay NoData
    SHAPE_ONLY = frozenset({"shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad", "is_leaf",
                            "size", "dim", "numel", "__len__", "is_floating_point", "is_complex",
                            "reshape", "view", "flatten", "unflatten", "unsqueeze", "squeeze", "expand", "expand_as",
                            "permute", "transpose", "movedim", "view_as", "reshape_as", "__getitem__", "split",
                            "chunk", "unbind", "to", "detach", "contiguous", "__hash__", "__repr__"})
    #: operations that make fresh tensors from the shape alone: their results are plain tensors
    FRESH = frozenset({"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "zeros_like", "ones_like",
                       "empty_like", "full_like"})

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name == "__get__":  # a property: its descriptor's name
            name = getattr(getattr(func, "__self__", None), "__name__", name)
        kwargs = kwargs or {}
        if name in cls.FRESH:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if name in cls.SHAPE_ONLY:
            return super().__torch_function__(func, types, args, kwargs)
        raise NeedsData(f"it reads the data's values ({name})")


class NeedsData(ValueError):
    """A model run on a batch without data read the values of ``x`` (:class:`NoData`): it cannot be
    drawn from its prior alone, only given real inputs."""


@dataclass
class Batch:
    """What flows from the data to a model: a minibatch and what is known about it.

    :param torch.Tensor x: ``(M, *event_shape)`` the data points, or None in a batch without data
        (:meth:`without_data`: drawing from the model's prior, as Pyro's ``model(x=None)``).
    :param torch.Tensor y: ``(M,)`` int64 class labels, or None where the data set has none.
    :param torch.Tensor labeled: ``(M,)`` bool, which of the labels the model may use (a
        semi-supervised budget, ``data.labeled``), or None: all of them.
    :param torch.Tensor weight: ``(M,)`` each point's weight in the minibatch's objective, or
        None: 1 each (see :func:`epoch_plan`; the loop applies it, a model never needs to).
    """

    x: Optional[torch.Tensor]
    y: Optional[torch.Tensor] = None
    labeled: Optional[torch.Tensor] = None
    weight: Optional[torch.Tensor] = None
    #: M, for a batch without data (x None)
    size: Optional[int] = None

    @classmethod
    def without_data(cls, size: int, event_shape=None, y: Optional[torch.Tensor] = None,
                     device="cpu") -> "Batch":
        """M = ``size`` points with no data (labels ``y`` where a family draws for them): what a
        model draws its prior predictive from, its observed site drawn rather than scored. With
        ``event_shape``, ``x`` is a :class:`NoData` of the points' shape (code that takes shapes
        from x runs, code that reads its values raises :class:`NeedsData`); without, ``x`` is None."""
        x = None if event_shape is None else torch.empty((int(size), *event_shape), device=device).as_subclass(NoData)
        batch = cls(x, y, size=int(size))
        batch._device = torch.device(device)
        return batch

    def __len__(self) -> int:
        return self.x.shape[0] if self.x is not None else int(self.size)

    @property
    def device(self) -> torch.device:
        if self.x is not None:
            return self.x.device
        return getattr(self, "_device", None) or (self.y.device if self.y is not None else torch.device("cpu"))

    def __getitem__(self, index) -> "Batch":
        """The points at ``index`` (a slice or an index tensor), with their labels."""
        if self.x is None or isinstance(self.x, NoData):
            kept = torch.arange(len(self))[index]
            return Batch.without_data(len(kept), None if self.x is None else self.x.shape[1:],
                                      None if self.y is None else self.y[index], self.device)
        return Batch(*(None if t is None else t[index] for t in (self.x, self.y, self.labeled, self.weight)))

    def split(self, size: int):
        """Consecutive chunks of at most ``size`` points."""
        return [self[i:i + size] for i in range(0, len(self), size)]

    def to(self, device) -> "Batch":
        if self.x is None or isinstance(self.x, NoData):
            return Batch.without_data(len(self), None if self.x is None else self.x.shape[1:],
                                      None if self.y is None else self.y.to(device), device)
        return Batch(*(None if t is None else t.to(device) for t in (self.x, self.y, self.labeled, self.weight)))


def as_batch(batch) -> Batch:
    """A :class:`Batch` from a Batch or a plain tensor of data points."""
    return batch if isinstance(batch, Batch) else Batch(batch)
