"""Evaluation of a trained VAE on held-out data: ELBO, IWAE bound, log-likelihood, diagnostics.

Units: nats per datapoint. ELBOs and bounds are higher-is-better log-probabilities (the
paper's "lower bound per datapoint", Figure 2); the test NLL is positive, -log p(x), as the
IWAE and VampPrior papers report it.
"""

import contextlib
import functools
import math
from typing import Dict, Iterator, List, Optional

import torch
from torch.distributions import Normal, kl_divergence

from pyrovae.data.batch import Batch, as_batch
from pyrovae.data.splits import Split
from pyrovae.infer.elbos import elbo_terms
from pyrovae.models.terms import LogMeanExp
from pyrovae.parts.posteriors import has_closed_form_kl
from pyrovae.parts.priors import priors_held
from pyrovae.progress import progress_bar
from pyrovae.rng import seeded

#: A latent unit u is active when Cov_x(E_q[u | x]) exceeds this (Burda et al. 2015).
ACTIVE_UNIT_THRESHOLD = 0.01


def _chunks(x, size: int) -> Iterator[Batch]:
    """x in consecutive :class:`~pyrovae.Batch` chunks: x is a tensor, a Batch or a
    :class:`~pyrovae.data.splits.Split` (read in chunks: a streamed split is never held whole)."""
    return x.batches(size) if isinstance(x, Split) else iter(as_batch(x).split(size))


def _scored(model, x, size: int) -> Iterator[Batch]:
    """x's chunks as test scores see them (:meth:`~pyrovae.Model.scoring_batch`: M2 withholds labels)."""
    scoring = getattr(model, "scoring_batch", None)
    return (scoring(chunk) if scoring is not None else chunk for chunk in _chunks(x, size))


def _device(x):
    return x.device if isinstance(x, (Split, Batch)) else as_batch(x).device


def titled_bar(title: Optional[str], total: int, unit: str = "point"):
    """A bar with an ETA on stderr (:func:`pyrovae.progress.progress_bar`), titled ``title``; none
    when ``title`` is None or stderr is not a terminal (a log file gets no bars)."""
    if title is None:
        return contextlib.nullcontext(None)
    return progress_bar(total=total, desc=title, unit=unit, unit_scale=True, leave=False)


@torch.no_grad()
def dataset_terms(model, x, num_particles: int = 1, batch_size: int = 1000, seed: int = 0,
                  progress: Optional[str] = None) -> Dict:
    """The mean ``elbo``, ``reconstruction`` (E_q[log p(x|z)]) and ``kl`` (KL(q || p)) per
    datapoint of x (a tensor, a :class:`~pyrovae.Batch` or a Split), with estimator B where the model
    allows it (else A), ``num_particles`` samples per point, in chunks of ``batch_size``;
    elbo = reconstruction - kl.

    It draws from its own seeded generator state and restores the caller's, so evaluating
    never changes a training run's random stream and the same parameters give the same value.
    A global latent (outside the plate "data") is shared by the points scored: its log-densities
    count 1/N per point with N = len(x), the per-point share of x's ELBO as a whole, whatever
    the chunks; :func:`log_likelihood` shares it alike. ``progress``: a bar's title (a terminal only).
    """
    reconstruction = kl = 0.0
    n = len(x)
    with seeded(_device(x), seed), titled_bar(progress, n) as bar, priors_held(model):
        for chunk in _scored(model, x, batch_size):  # a global latent counts 1/N per point, whatever the chunks
            r, k = elbo_terms(model, chunk, num_particles, num_data=n)
            reconstruction, kl = reconstruction + float(r.sum()), kl + float(k.sum())
            if bar is not None:
                bar.update(len(chunk))
    return {"elbo": (reconstruction - kl) / n, "reconstruction": reconstruction / n, "kl": kl / n}


def dataset_elbo(model, x, num_particles: int = 1, batch_size: int = 1000, seed: int = 0,
                 progress: Optional[str] = None) -> float:
    """The mean ELBO per datapoint of x, (1/N) sum_i L(theta, phi; x_i) (see :func:`dataset_terms`)."""
    return dataset_terms(model, x, num_particles, batch_size, seed, progress)["elbo"]


#: numbers per tensor of one chunk of importance samples (samples x points x data size): on the CPU
#: per torch thread, so that each thread's share of a chunk stays in its caches (one thread: 2^19 ran at
#: 1.35x the decoder's matrix-product floor where 2^20 ran at 1.8x, benchmarks/vampprior.py; two
#: threads: 2^20 at 1.1x where 2^19 ran at 1.4x and 2^24 at 2.7x, benchmarks/throughput.py --nll); on a
#: GPU large, to fill it. The chunks take the seeded draws in turn, so the last digits of an estimate
#: depend on the chunk size, hence on the device and the thread count (as a sum's rounding does).
CHUNK_ELEMENTS = {"cpu": 2**19, "cuda": 2**24}


def chunk_elements(device) -> int:
    """Numbers per tensor of one chunk of importance samples on ``device``: :data:`CHUNK_ELEMENTS`, on
    the CPU times torch's thread count."""
    kind = torch.device(device).type
    if kind == "cpu":
        return CHUNK_ELEMENTS["cpu"] * max(1, torch.get_num_threads())
    return CHUNK_ELEMENTS.get(kind, CHUNK_ELEMENTS["cuda"])


@torch.no_grad()
def log_likelihood(model, x, num_samples: int = 5000, batch_size: int = 100,
                   max_elements: Optional[int] = None, seed: Optional[int] = 0,
                   progress: Optional[str] = None) -> torch.Tensor:
    """The importance-sampled estimate of log p(x_i) for each datapoint (shape ``(N,)``, nats).

    With q(z|x) as the proposal and K = ``num_samples`` (Kingma & Welling 2014, App. D;
    Burda et al. 2015, who call it IWAE_K):

        log p(x) ~= log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x),   z_k ~ q(z | x),

    the log-weights being the model's :meth:`~pyrovae.Model.terms`. It is a stochastic lower
    bound whose expectation rises to log p(x) as K grows. Each batch of points is encoded once
    (:meth:`~pyrovae.Model.importance_sampler`), then its samples are drawn and scored in chunks whose
    size keeps about ``max_elements`` numbers per tensor (samples x datapoints x data size; default
    :func:`chunk_elements` for the device), and the log-sum-exp is accumulated across chunks, so
    memory stays bounded at any K. The prior's p(z) is computed once for the whole call
    (:func:`~pyrovae.parts.priors.priors_held`: the VampPrior's pass over its pseudo-inputs). Runs on
    x's device (move the model there first). ``seed=None`` draws from the caller's generator.
    ``progress``: a bar's title, counting importance samples (a terminal only).
    """
    out = []
    n = len(x)
    device = _device(x)
    if max_elements is None:
        max_elements = chunk_elements(device)
    with seeded(device, seed), titled_bar(progress, n * num_samples, "sample") as bar, priors_held(model):
        for xb in _scored(model, x, batch_size):
            m = len(xb)
            per_sample = m * max(math.prod(model.event_shape), getattr(model, "latent_dim", 0), 512)
            chunk = max(1, min(num_samples, max_elements // per_sample))
            draw = model.importance_sampler(xb, n)
            estimate = LogMeanExp()
            for start in range(0, num_samples, chunk):
                k = min(chunk, num_samples - start)
                estimate.add(draw(k))
                if bar is not None:
                    bar.update(m * k)
            out.append(estimate.value)
    return torch.cat(out)


@torch.no_grad()
def posterior_means(model, x, batch_size: int = 1000) -> torch.Tensor:
    """E_q[z | x] for each point of x, ``(N, latent size)`` (:meth:`~pyrovae.Model.encode`, as test
    scores see the points: M2 withholds labels), read in chunks (a streamed split is never held whole)."""
    return torch.cat([model.encode(chunk) for chunk in _scored(model, x, batch_size)])


@torch.no_grad()
def active_units(model, x, threshold: float = ACTIVE_UNIT_THRESHOLD, batch_size: int = 1000):
    """``(count, activity)``: activity_u = Cov_x(E_q[u | x]), the variance over the data of
    each latent unit's posterior mean (:func:`posterior_means`); a unit is active when it
    exceeds ``threshold`` (Burda et al. 2015, Sec. 5.2)."""
    means = posterior_means(model, x, batch_size)
    activity = means.var(0, unbiased=False) if means.shape[0] > 1 else torch.zeros(means.shape[1])
    return int((activity > threshold).sum()), activity


@torch.no_grad()
def kl_per_dimension(model, x, batch_size: int = 1000) -> Optional[List[float]]:
    """The mean over x of KL(q(z_j | x) || p(z_j)) for each latent dimension j, in nats.

    Defined in closed form when the model has one diagonal-Gaussian posterior and a prior that
    factorizes into independent Gaussians (the ``vae`` family with ``standard_normal`` or
    ``gaussian``); None otherwise (mixture, VampPrior, flow priors couple the dimensions).
    """
    if not (hasattr(model, "posterior") and hasattr(model, "prior")) or getattr(model, "num_conditions", 0):
        return None  # (a conditional family's posterior needs the labels)
    if not has_closed_form_kl(getattr(model, "posterior_module", None)):
        return None  # a flow posterior (iaf) couples the dimensions
    prior = model.prior()
    base = getattr(prior, "base_dist", None)
    if not isinstance(base, Normal) or getattr(prior, "reinterpreted_batch_ndims", 0) != 1:
        return None
    total = 0.0
    for chunk in _chunks(x, batch_size):
        q = model.posterior(chunk.x).base_dist
        total = total + kl_divergence(q, base).sum(0)
    return (total / len(x)).tolist()


@torch.no_grad()
def accuracy(model, x, batch_size: int = 1000) -> Optional[float]:
    """The fraction of x's points whose label the model's classifier predicts (M2's
    argmax_y q(y | x)); None for a family that does not classify or data without labels."""
    labels = x.labels if isinstance(x, Split) else as_batch(x).y
    if labels is None or len(x) == 0:
        return None
    classify = classifier(model, next(_chunks(x, 2)))
    if classify is None:
        return None
    correct = sum(int((classify(chunk) == chunk.y.to(chunk.x.device)).sum()) for chunk in _chunks(x, batch_size))
    return correct / len(x)


def classifier(model, labeled_batch=None):
    """The model's classifier, a function of a batch to ``(M,)`` labels: its ``classify`` (M2's
    argmax_y q(y | x)); for a family that takes labels per minibatch and has none, its guide's
    q(y | x) at the label site shown on ``labeled_batch`` (:meth:`~pyrovae.Model.label_site`);
    else None."""
    if hasattr(model, "classify"):
        return model.classify
    if getattr(model, "labels", None) != "per_minibatch" or labeled_batch is None:
        return None
    site = model.label_site(labeled_batch)
    return None if site is None else functools.partial(model.guide_classify, site=site)


def evaluate(model, x, nll_samples: int = 5000, iwae_samples: int = 50, elbo_particles: int = 10,
             seed: int = 0, progress: bool = False) -> Dict:
    """Every test number of a model on x (a tensor, a Batch or a Split; the keys are those of ``pyrovae evaluate``,
    docs/evaluation.md).
    ``progress``: a tqdm bar with an ETA for each estimate (ELBO, IWAE, NLL), on a terminal only."""
    count, activity = active_units(model, x)
    titled = (lambda title: title) if progress else (lambda title: None)
    return {
        "test_elbo": dataset_elbo(model, x, elbo_particles, seed=seed, progress=titled(f"ELBO (L={elbo_particles})")),
        "elbo_particles": elbo_particles,
        "test_iwae": float(log_likelihood(model, x, iwae_samples, seed=seed,
                                          progress=titled(f"IWAE (k={iwae_samples})")).mean()),
        "iwae_samples": iwae_samples,
        "test_nll": -float(log_likelihood(model, x, nll_samples, seed=seed + 1,
                                          progress=titled(f"NLL (K={nll_samples})")).mean()),
        "nll_samples": nll_samples,
        "active_units": count,
        "latent_dim": int(activity.shape[0]),
        "unit_activity": activity.tolist(),
        "kl_per_dim": kl_per_dimension(model, x),
        "num_test": len(x),
        **({} if (acc := accuracy(model, x)) is None else {"test_accuracy": acc}),
    }


