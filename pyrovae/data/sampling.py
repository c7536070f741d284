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
    (None: 1 each), ``size``, the number of the N training points the step stands for (its
    objective's weighted sum is divided by it: the M points of a plain chunk, N / K for the K
    steps of an epoch of labelled and unlabelled minibatches), and ``labeled``: whether the
    minibatch is all labelled (True), all unlabelled (False, its labels withheld), or mixed
    as the label budget marks its points (None)."""

    index: torch.Tensor
    weight: Optional[torch.Tensor]
    size: float
    labeled: Optional[bool] = None


def labeled_draws(num_labeled: int, labeled_weight: float = 1.0) -> int:
    """D_l, the labelled points an epoch of labelled and unlabelled minibatches draws: w N_l
    (rounded, at least 1): each labelled point about w times, cycling through the labelled set."""
    return max(1, round(labeled_weight * num_labeled))


def steps_per_epoch(num_train: int, batch_size: int, labeled_per_batch: int = 0, num_labeled: int = 0,
                    labeled_weight: float = 1.0, per_minibatch: bool = False) -> int:
    """Minibatches in an epoch of ``num_train`` points (:func:`epoch_plan`): the permutation in
    chunks of M, or of M - k beside k labelled draws, or (``per_minibatch``, under a budget of
    N_l = ``num_labeled`` labels) ceil(N_u / M) unlabelled and ceil(D_l / M) labelled minibatches."""
    if per_minibatch and num_labeled:
        labeled = labeled_draws(num_labeled, labeled_weight)
        return -(-(num_train - num_labeled) // batch_size) + -(-labeled // batch_size)
    return -(-num_train // (batch_size - labeled_per_batch))


def epoch_plan(n: int, batch_size: int, seed: int, epoch: int, labeled: Optional[torch.Tensor] = None,
               labeled_per_batch: int = 0, labeled_weight: float = 1.0, device="cpu",
               per_minibatch: bool = False) -> List[Step]:
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

    ``per_minibatch`` (a family that declares ``labels = "per_minibatch"``, as Pyro's M2 example
    takes its data): every minibatch is all labelled or all unlabelled; see :func:`split_plan`.
    """
    order = epoch_order(n, seed, epoch, device)
    if per_minibatch and labeled is not None:
        return split_plan(order, labeled, batch_size, seed, epoch, labeled_weight, device)
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


def split_plan(order: torch.Tensor, labeled: torch.Tensor, batch_size: int, seed: int, epoch: int,
               labeled_weight: float = 1.0, device="cpu") -> List[Step]:
    """An epoch of all-labelled and all-unlabelled minibatches of M = ``batch_size``, in a fixed
    proportion and a seeded order, from (seed, epoch) only.

    The N_u unlabelled points, in the epoch's permutation ``order``, make K_u = ceil(N_u / M)
    unlabelled minibatches (labels withheld); D_l = w N_l labelled draws (:func:`labeled_draws`,
    w = ``labeled_weight``), seeded permutations of the N_l labelled points one after another,
    make K_l = ceil(D_l / M) labelled ones; the K = K_u + K_l minibatches are shuffled by a seeded
    permutation. The objective is

        J = sum_unlabelled f_u(x_i) + w sum_labelled f_l(x_i, y_i),

    and each labelled draw weighs c = w N_l / D_l (1 up to the rounding of D_l). A labelled point
    is drawn D_l / N_l times in expectation (whole cycles, then a uniformly drawn part of one), so
    it weighs w in expectation and the epoch's steps together sum to J: exactly where w N_l is a
    whole number of cycles (w = 1, 2, ...), unbiasedly otherwise. Each step stands for N / K of
    the N points (``size``): its loss is -(K / N) times its weighted sum, so that for a step drawn
    uniformly among the epoch's K, E[(K / N) sum_step] = J / N. Any proportion is unbiased; the proportion
    K_l : K_u (about w N_l : N_u) only sets how often the labels are seen. With w = 1 that is the
    data's own proportion, as Pyro's ``examples/vae/ss_vae_M2.py`` feeds it; with w = N_u / N_l
    (``train.labeled_weight = "balanced"``) the labelled and unlabelled minibatches come in turn.
    """
    unlabeled = order[~labeled[order]]
    labeled_index = labeled.nonzero().squeeze(-1)
    num_labeled = labeled_index.numel()
    draws = labeled_draws(num_labeled, labeled_weight)
    generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch + 15_838)
    cycles = [labeled_index[torch.randperm(num_labeled, generator=generator, device=device)]
              for _ in range(-(-draws // num_labeled))]
    labeled_order = torch.cat(cycles)[:draws]
    weight = labeled_weight * num_labeled / draws
    parts = [(chunk, None, False) for chunk in unlabeled.split(batch_size) if chunk.numel()]
    parts += [(chunk, None if weight == 1 else torch.full((chunk.numel(),), weight, device=device), True)
              for chunk in labeled_order.split(batch_size)]
    size = order.numel() / len(parts)
    shuffle = torch.randperm(len(parts), generator=generator, device=device).tolist()
    return [Step(parts[i][0], parts[i][1], size, parts[i][2]) for i in shuffle]
