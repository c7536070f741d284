"""What a run checks when it is built, before any step: the data against the model
(:func:`check_run_data`: shapes, supports, the family's dry run, labels that reach nothing) and the
minibatches a dry step sees (:func:`dry_training_batches`, of each kind the steps will train on)."""

from typing import List

import torch

from pyrovae.data.batch import Batch
from pyrovae.data.datasets import Dataset, binarize_split
from pyrovae.errors import ConfigError
from pyrovae.models.base import per_minibatch_labels


def dry_training_batches(data: Dataset, split_labels: bool = False) -> List[Batch]:
    """Two test points as the training steps see them: under a label budget (``data.labeled``)
    one labelled and one not, as minibatches that mix them are (a family's program that cannot
    take such a minibatch then fails when the run is built, not mid-run); with ``split_labels``
    (labels = "per_minibatch") the two points labelled, then the two without labels: the two
    kinds of minibatch it trains on."""
    head = data.test_head(2)
    if data.labeled is None or head.y is None or len(head) < 2:
        return [head]
    if split_labels:
        return [as_labeled(head, True), as_labeled(head, False)]
    return [Batch(head.x, head.y, torch.tensor([True, False], device=head.x.device))]


def as_labeled(batch: Batch, labeled: bool) -> Batch:
    """A batch as a minibatch of one kind: all labelled (``batch.y`` set, ``batch.labeled`` all
    true) or all unlabelled (no labels: ``batch.y`` None), its weights kept."""
    if not labeled or batch.y is None:
        return Batch(batch.x, None, None, batch.weight)
    return Batch(batch.x, batch.y, torch.ones(len(batch.y), dtype=torch.bool, device=batch.y.device), batch.weight)


def check_run_data(model, data: Dataset, batch_size: int, engine: str = "torch") -> None:
    """Reject data that does not fit the model or the batch size, before any training."""
    if tuple(data.event_shape) != tuple(model.event_shape):
        raise ConfigError(f"data points have shape {data.event_shape} but the model expects {model.event_shape}")
    if batch_size > data.num_train:
        raise ConfigError(f"train.batch_size = {batch_size}: larger than the training split ({data.num_train} points)")
    if getattr(data, "checked_for", None) is not model:  # pyrovae.train checks before fit does: once
        # chunk by chunk (a streamed split is read once, never held); binarized points are 0 or 1, however drawn
        # (binarized points are 0 or 1 everywhere: one chunk shows whether the likelihood takes them)
        binarized = "threshold" if data.binarize != "none" else "none"
        for i, chunk in enumerate(data.train_split.chunks()):
            if binarized == "none" or i == 0:
                model.check_data(binarize_split(chunk, binarized), f"data {data.name!r} (train split)")
            else:
                break
        for chunk in data.test_split.chunks():
            model.check_data(chunk, f"data {data.name!r} (test split)")
        data.checked_for = model
    head = data.test_head(2)
    try:  # a family that takes labels per minibatch, on a labelled and an unlabelled batch
        split = per_minibatch_labels(model, engine) and data.labeled is not None
        model.dry_run(dry_training_batches(data, True) if split else head, data.num_train)
    except ConfigError as e:
        largest = float(head.x.abs().max()) if head.x.numel() else 0.0
        if largest > LARGE_VALUES and getattr(data, "standardization", None) is None:
            raise ConfigError(f"{e}; the data hold values up to {largest:g} (raw features in units of their own "
                              "often break a network's first step): try data.standardize = true") from None
        raise
    if data.labeled is not None and head.y is not None and (data.num_classes or 0) > 1 \
            and not labels_reach(model, head, data.num_classes, data.num_train):
        raise ConfigError(f"data.labeled = {int(data.labeled.sum())}: model ({type(model).__name__}) reads no labels: "
                          "on labelled points its model and guide give the same terms whatever the labels are; a "
                          "label budget is for a family that reads batch.y (m2, cvae, or your own)")


def labels_reach(model, batch: Batch, num_classes: int, num_data: int) -> bool:
    """Whether a family's terms on the labelled ``batch`` depend on its labels: they are computed
    with the labels and with other labels, from the same draws."""
    other = (batch.y + 1) % num_classes
    terms = []
    for y in (batch.y, other):
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            terms.append(model.terms(Batch(batch.x, y), 1, num_data, kl=False))
    fields = ("reconstruction", "log_prior", "log_q", "auxiliary", "importance_log_weights")
    return any(not _same_values(getattr(terms[0], f), getattr(terms[1], f)) for f in fields)


def _same_values(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and bool(torch.equal(a, b))


#: a dry-run failure on data with values beyond this suggests data.standardize
LARGE_VALUES = 100.0
