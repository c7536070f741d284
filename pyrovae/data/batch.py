"""The one thing that flows from the data to a model: :class:`Batch` (points, labels, mask, weights)."""

from dataclasses import dataclass
from typing import Optional

import torch


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

    @property
    def device(self) -> torch.device:
        return self.x.device

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
