"""Evaluation of a trained VAE on held-out data: ELBO, IWAE bound, log-likelihood, diagnostics.

Units: nats per datapoint. ELBOs and bounds are higher-is-better log-probabilities (the
paper's "lower bound per datapoint", Figure 2); the test NLL is positive, -log p(x), as the
IWAE and VampPrior papers report it.
"""

import contextlib
import json
import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch.distributions import Normal, kl_divergence

from .data import as_batch
from .objectives import elbo_terms

#: A latent unit u is active when Cov_x(E_q[u | x]) exceeds this (Burda et al. 2015).
ACTIVE_UNIT_THRESHOLD = 0.01


@contextlib.contextmanager
def seeded(x: torch.Tensor, seed: Optional[int]):
    """Draw from a generator seeded with ``seed``, leaving the caller's state untouched (None: the caller's)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def _scored(model, x):
    """The batch test scores are computed on (:meth:`~pyrovae.Model.scoring_batch`: M2 withholds labels)."""
    scoring = getattr(model, "scoring_batch", None)
    return scoring(x) if scoring is not None else as_batch(x)


def _chunks(x, size: int):
    return as_batch(x).split(size)


@torch.no_grad()
def dataset_terms(model, x, num_particles: int = 1, batch_size: int = 1000, seed: int = 0) -> Dict:
    """The mean ``elbo``, ``reconstruction`` (E_q[log p(x|z)]) and ``kl`` (KL(q || p)) per
    datapoint of x (a tensor or a :class:`~pyrovae.Batch`), with estimator B where the model
    allows it (else A), ``num_particles`` samples per point, in chunks of ``batch_size``;
    elbo = reconstruction - kl.

    It draws from its own seeded generator state and restores the caller's, so evaluating
    never changes a training run's random stream and the same parameters give the same value.
    A global latent (outside the plate "data") is shared by the points scored: its log-densities
    count 1/N per point with N = len(x), the per-point share of x's ELBO as a whole, whatever
    the chunks; :func:`log_likelihood` shares it alike.
    """
    reconstruction = kl = 0.0
    x = _scored(model, x)
    with seeded(x.x, seed):
        for chunk in x.split(batch_size):  # a global latent counts 1/len(x) per point, whatever the chunks
            r, k = elbo_terms(model, chunk, num_particles, num_data=len(x))
            reconstruction, kl = reconstruction + float(r.sum()), kl + float(k.sum())
    n = len(x)
    return {"elbo": (reconstruction - kl) / n, "reconstruction": reconstruction / n, "kl": kl / n}


def dataset_elbo(model, x, num_particles: int = 1, batch_size: int = 1000, seed: int = 0) -> float:
    """The mean ELBO per datapoint of x, (1/N) sum_i L(theta, phi; x_i) (see :func:`dataset_terms`)."""
    return dataset_terms(model, x, num_particles, batch_size, seed)["elbo"]


@torch.no_grad()
def log_likelihood(model, x, num_samples: int = 5000, batch_size: int = 100,
                   max_elements: int = 2**24, seed: Optional[int] = 0) -> torch.Tensor:
    """The importance-sampled estimate of log p(x_i) for each datapoint (shape ``(N,)``, nats).

    With q(z|x) as the proposal and K = ``num_samples`` (Kingma & Welling 2014, App. D;
    Burda et al. 2015, who call it IWAE_K):

        log p(x) ~= log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x),   z_k ~ q(z | x),

    the log-weights being the model's :meth:`~pyrovae.Model.terms`. It is a stochastic lower
    bound whose expectation rises to log p(x) as K grows. Samples are drawn in chunks whose size
    keeps about ``max_elements`` numbers per tensor (samples x datapoints x data size), and the
    log-sum-exp is accumulated across chunks, so memory stays bounded at any K. Runs on x's
    device (move the model there first). ``seed=None`` draws from the caller's generator.
    """
    out = []
    x = _scored(model, x)
    with seeded(x.x, seed):
        for xb in x.split(batch_size):
            m = len(xb)
            per_sample = m * max(math.prod(model.event_shape), getattr(model, "latent_dim", 0), 512)
            chunk = max(1, min(num_samples, max_elements // per_sample))
            acc = torch.full((m,), -math.inf, device=xb.x.device)
            for start in range(0, num_samples, chunk):
                log_w = model.terms(xb, min(chunk, num_samples - start), len(x), kl=False).log_weights
                acc = torch.logaddexp(acc, torch.logsumexp(log_w, 0))
            out.append(acc - math.log(num_samples))
    return torch.cat(out)


@torch.no_grad()
def active_units(model, x, threshold: float = ACTIVE_UNIT_THRESHOLD, batch_size: int = 1000):
    """``(count, activity)``: activity_u = Cov_x(E_q[u | x]), the variance over the data of
    each latent unit's posterior mean (:meth:`~pyrovae.Model.encode`); a unit is active when it
    exceeds ``threshold`` (Burda et al. 2015, Sec. 5.2)."""
    means = torch.cat([model.encode(chunk) for chunk in _chunks(_scored(model, x), batch_size)])
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
    if not getattr(getattr(model, "posterior_module", None), "closed_form", True):
        return None  # a flow posterior (iaf) couples the dimensions
    prior = model.prior()
    base = getattr(prior, "base_dist", None)
    if not isinstance(base, Normal) or getattr(prior, "reinterpreted_batch_ndims", 0) != 1:
        return None
    total = 0.0
    for chunk in _chunks(x, batch_size):
        q = model.posterior(chunk.x).base_dist
        total = total + kl_divergence(q, base).sum(0)
    return (total / len(as_batch(x))).tolist()


@torch.no_grad()
def accuracy(model, x, batch_size: int = 1000) -> Optional[float]:
    """The fraction of x's points whose label the model's classifier predicts (M2's
    argmax_y q(y | x)); None for a family that does not classify or data without labels."""
    x = as_batch(x)
    if not hasattr(model, "classify") or x.y is None or len(x) == 0:
        return None
    correct = sum(int((model.classify(chunk) == chunk.y.to(chunk.x.device)).sum()) for chunk in x.split(batch_size))
    return correct / len(x)


def evaluate(model, x, nll_samples: int = 5000, iwae_samples: int = 50, elbo_particles: int = 10,
             seed: int = 0) -> Dict:
    """Every test number of a model on x (a tensor or a Batch; see ``pyrovae evaluate`` in the README)."""
    count, activity = active_units(model, x)
    return {
        "test_elbo": dataset_elbo(model, x, elbo_particles, seed=seed),
        "elbo_particles": elbo_particles,
        "test_iwae": float(log_likelihood(model, x, iwae_samples, seed=seed).mean()),
        "iwae_samples": iwae_samples,
        "test_nll": -float(log_likelihood(model, x, nll_samples, seed=seed + 1).mean()),
        "nll_samples": nll_samples,
        "active_units": count,
        "latent_dim": int(activity.shape[0]),
        "unit_activity": activity.tolist(),
        "kl_per_dim": kl_per_dimension(model, x),
        "num_test": len(as_batch(x)),
        **({} if (acc := accuracy(model, x)) is None else {"test_accuracy": acc}),
    }


def evaluate_run(run_dir, nll_samples: int = 5000, iwae_samples: int = 50, elbo_particles: int = 10,
                 device: str = "cpu", out=None, report: Optional[Callable[[Dict], None]] = None,
                 plugins: Sequence[str] = ()) -> Dict:
    """Score a finished run on its test split and write ``evaluation.json``.

    ``plugins``: the plugin files or modules a run trained with them needs (checked against the
    SHA-256 the run recorded, then run from the bytes that were hashed; nothing the run folder
    names is ever run). ``out`` is where the JSON goes (default ``RUN_DIR/evaluation.json``; never
    one of the run's own files); it is checked to be writable before any work, and writing into
    the run folder takes its lock (one writer per run folder). The data must be those the run
    was trained on: their fingerprint (shapes and SHA-256 of the values) is compared with the
    checkpoint's. ``report(result)``, if given, is called before the file is written (the CLI
    prints the numbers there), so a failed write never loses them. The file is strict JSON: a
    non-finite result is refused in one line, and nothing is written.
    """
    # a run folder is the application layer's: imported here, so that evaluation itself stays core
    from .checkpoint import data_fingerprint, fingerprint_difference, open_run
    from .devices import resolve_device
    from .errors import RunDirError
    from .memory import check_evaluation_memory
    from .runfolder import EVALUATION, RunLock, atomic_write_bytes, check_writable, own_file_problem, remove_stale

    run_dir = Path(run_dir)
    device = resolve_device(str(device), "--device")
    out = Path(out) if out is not None else run_dir / EVALUATION
    problem = own_file_problem(out, run_dir)
    if problem:
        raise RunDirError(f"--out {problem}")
    into_run = out.parent.resolve() == run_dir.resolve()
    opened = open_run(run_dir, plugins, "pyrovae evaluate RUN_DIR {plugins}", device)
    config, path = opened.config, run_dir / "checkpoint.pt"
    model = opened.model.to(device).eval()
    data = config.data.load()
    differs = fingerprint_difference(opened.state["data"], data_fingerprint(data))
    if differs:
        raise RunDirError(f"{path}: the data differ from the data it was trained on: {differs}; "
                          "evaluate with the run's own data")
    check_evaluation_memory(model, elbo_particles, device)
    check_writable(out.parent, "--out " if not into_run else "")
    with contextlib.ExitStack() as stack:
        if into_run:
            stack.enter_context(RunLock(run_dir, "evaluate"))
            remove_stale(run_dir)
        result = evaluate(model, data.test_batch.to(device), nll_samples, iwae_samples, elbo_particles,
                          seed=config.train.seed)
        bad = non_finite(result)
        if bad:
            raise RunDirError(f"{run_dir}: the evaluation gave {bad}: the model or the data give non-finite "
                              "scores, and evaluation.json holds finite numbers only; nothing was written")
        if report is not None:
            report(result)
        text = (json.dumps(result, indent=2, allow_nan=False) + "\n").encode()
        atomic_write_bytes(out, lambda f: f.write(text), "; the numbers above are the result")
    return result


def non_finite(result, where: str = "") -> Optional[str]:
    """The first number in a nest of results that is NaN or infinite, as ``key = nan`` (None if none)."""
    items = result.items() if isinstance(result, dict) else enumerate(result) if isinstance(result, list) else ()
    for key, value in items:
        name = f"{where}.{key}" if where and isinstance(result, dict) else f"{where}[{key}]" if where else str(key)
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name} = {value}"
        found = non_finite(value, name) if isinstance(value, (dict, list)) else None
        if found:
            return found
    return None
