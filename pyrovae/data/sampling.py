"""Epoch plans: which training points each step of an epoch draws, from (seed, epoch) only."""

from dataclasses import dataclass
from typing import List, Optional

import torch


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
    labeled_index = labeled.nonzero().squeeze(-1)
    generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch + 7_919)
    steps = []
    for chunk in order.split(batch_size - labeled_per_batch):
        draws = labeled_index[torch.randint(labeled_index.numel(), (labeled_per_batch,), generator=generator,
                                            device=device)]
        share = chunk.numel() * labeled_index.numel() / (labeled_per_batch * n)
        weight = torch.cat([(~labeled[chunk]).float(),
                            torch.full((labeled_per_batch,), labeled_weight * share, device=device)])
        steps.append(Step(torch.cat([chunk, draws]), weight, chunk.numel()))
    return steps
