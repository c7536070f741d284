"""Training: the SVI loop (:func:`fit`) and whole runs with their folders (:func:`train`).

Each step draws a minibatch of M indices from the epoch's permutation of the N training
points, and takes a gradient step on the per-datapoint loss

    loss = -ELBO_hat(minibatch) / N,   ELBO_hat = (N/M) sum_{i in batch} L(theta, phi; x_i),

where ELBO_hat is the Pyro ELBO of the model and guide under ``pyro.plate("data", size=N)``:
an unbiased estimate of the full-data ELBO (Kingma & Welling 2014, eq. 8). Dividing by N
keeps learning rates and weight decay independent of the data set's size.
"""

import dataclasses
import datetime
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import pyro
import torch
from tqdm.auto import tqdm

from .checkpoint import CHECKPOINT, CONFIG, build_vae, read_checkpoint, save_checkpoint, set_rng_state
from .config import Config, TrainConfig, dumps
from .data import Dataset, binarize_split, load_dataset
from .errors import ConfigError, PyrovaeError, RunDirError
from .evaluate import active_units, dataset_elbo
from .objectives import elbo_per_datapoint, make_elbo, resolve_estimator
from .optim import build_optimizer
from .plots import plot_run

METRICS = "metrics.jsonl"


class TrainingError(PyrovaeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class PosteriorCollapseWarning(UserWarning):
    """Most latent units are inactive: q(z|x) has collapsed onto the prior for them."""


def kl_weight(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """beta, reached linearly over ``kl_warmup_epochs`` epochs (Bowman et al. 2016; Sønderby et al. 2016)."""
    if cfg.kl_warmup_epochs == 0:
        return cfg.beta
    return cfg.beta * min(1.0, (step + 1) / (cfg.kl_warmup_epochs * steps_per_epoch))


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; asking for CUDA where there is none is a ConfigError."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device = {name!r}: CUDA is not available on this machine; use 'cpu'")
        index = int(name[5:]) if name.startswith("cuda:") else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"train.device = {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif name != "cpu":
        raise ConfigError(f"train.device = {name!r}: valid: cpu, cuda, cuda:N")
    return torch.device(name)


def check_data(vae, data: Dataset, batch_size: int) -> None:
    """Reject data that does not fit the VAE or the batch size, before any training."""
    if tuple(data.event_shape) != tuple(vae.event_shape):
        raise ConfigError(f"data points have shape {data.event_shape} but the VAE expects {vae.event_shape}")
    if batch_size > data.num_train:
        raise ConfigError(f"train.batch_size = {batch_size}: larger than the training split ({data.num_train} points)")
    vae.likelihood.check_data(binarize_split(data.train, data.binarize), f"data {data.name!r} (train split)")
    vae.likelihood.check_data(data.test, f"data {data.name!r} (test split)")


def fit(vae, data: Dataset, train: Optional[TrainConfig] = None, optim: Optional[Dict[str, Any]] = None,
        run_dir=None, config: Optional[Config] = None, resume: bool = False, **train_options) -> List[Dict]:
    """Train ``vae`` on ``data`` by stochastic variational inference; return the metrics per epoch.

    :param VAE vae: the model and guide.
    :param Dataset data: the splits (see :func:`pyrovae.load_dataset`).
    :param TrainConfig train: epochs, batch size M, estimator, particles L, seed, device, ...
    :param dict optim: an optimizer spec, e.g. ``{"name": "adagrad", "lr": 0.02}`` (default Adam 1e-3).
    :param run_dir: if given, write ``metrics.jsonl``, ``checkpoint.pt`` and the figures there
        (needs ``config``, the resolved run config that :func:`train` passes).
    :param bool resume: continue from ``run_dir/checkpoint.pt``.
    :param train_options: overrides of ``train``'s fields, e.g. ``epochs=5``.

    Each returned record has ``epoch``, ``step``, ``samples_seen``, ``train_elbo`` (the mean
    of the epoch's minibatch ELBO estimates), ``train_objective`` (the mean of what was
    maximised: the same as ``train_elbo`` unless the estimator is ``iwae`` or the KL is
    weighted), ``kl_weight`` (at the epoch's end), ``test_elbo`` and ``active_units`` (every
    ``eval_every`` epochs and after the last, else None), ``train_seconds`` and
    ``images_per_second``. ELBOs are nats per datapoint, higher is better; the reported ELBO
    is always the true one (beta = 1). A :class:`PosteriorCollapseWarning` is issued once if
    fewer than half of the latent units are active at an evaluation after the first epoch.
    """
    try:
        cfg = dataclasses.replace(train or TrainConfig(), **train_options)
    except TypeError as e:
        raise ConfigError(f"fit: {e}") from None
    cfg.check()
    optim = optim or {"name": "adam", "lr": 1e-3}
    if run_dir is not None and config is None:
        raise ValueError("fit(run_dir=...) needs the run's config; use pyrovae.train(config, out_dir) instead")
    device = resolve_device(cfg.device)
    vae.to(device)
    data = data.to(device)
    check_data(vae, data, cfg.batch_size)
    estimator = resolve_estimator(cfg.estimator, vae)
    elbo = make_elbo(estimator, vae, cfg.num_particles)
    optimizer = build_optimizer(optim, vae.parameters())

    counters = {"epoch": 0, "step": 0, "samples_seen": 0}
    metrics: List[Dict] = []
    if resume:
        state = read_checkpoint(Path(run_dir) / CHECKPOINT)
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        counters = state["counters"]
        set_rng_state(state["rng"])
        metrics = _read_metrics(Path(run_dir) / METRICS, counters["epoch"])
    else:
        pyro.set_rng_seed(cfg.seed)

    n, m = data.num_train, cfg.batch_size
    steps_per_epoch = -(-n // m)
    warned = False
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=counters["epoch"] * steps_per_epoch, unit="step",
               disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for epoch in range(counters["epoch"] + 1, cfg.epochs + 1):
            # The data order depends on (seed, epoch) only, so a resumed run sees the same batches.
            order = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=order, device=device)
            total = torch.zeros((), device=device)  # sum over points of the objective's estimates
            total_elbo = torch.zeros((), device=device)  # ... of the ELBO's, when the objective differs
            start = time.perf_counter()
            for i, index in enumerate(perm.split(m)):
                x = data.batch(index)
                vae.kl_weight = kl_weight(cfg, counters["step"] + i, steps_per_epoch)
                loss = elbo.differentiable_loss(vae.model, vae.guide, x, n) / n
                batch_loss = loss.detach() * index.numel()  # = -sum_i objective_i over the batch
                total += batch_loss
                if vae.kl_weight != 1.0 or estimator == "iwae":
                    with torch.no_grad():
                        total_elbo -= elbo_per_datapoint(vae, x).sum()
                else:
                    total_elbo += batch_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update()
                if i % 20 == 0:
                    bar.set_postfix(epoch=epoch, loss=f"{total.item() / (i * m + index.numel()):.2f}")
            objective = -total.item() / n
            train_elbo = -total_elbo.item() / n
            seconds = time.perf_counter() - start
            counters = {"epoch": epoch, "step": counters["step"] + steps_per_epoch,
                        "samples_seen": counters["samples_seen"] + n}
            if not (math.isfinite(objective) and math.isfinite(train_elbo)):
                raise TrainingError(f"non-finite loss in epoch {epoch} (by step {counters['step']}): try a smaller "
                                    "optim.lr, check the data's scale, or use a bounded likelihood scale; "
                                    "the last good checkpoint is kept")
            record = {**counters, "train_elbo": train_elbo, "train_objective": objective, "kl_weight": vae.kl_weight,
                      "test_elbo": None, "active_units": None, "train_seconds": seconds,
                      "images_per_second": n / seconds}
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                record["test_elbo"] = dataset_elbo(vae, data.test, cfg.eval_particles, seed=cfg.seed)
                record["active_units"] = active_units(vae, data.test)[0]
                bar.set_postfix(epoch=epoch, elbo=f"{train_elbo:.2f}", test_elbo=f"{record['test_elbo']:.2f}")
                if 2 * record["active_units"] < vae.latent_dim and epoch > 1 and not warned:
                    warned = True
                    warnings.warn(f"epoch {epoch}: only {record['active_units']} of {vae.latent_dim} latent units are "
                                  "active (Cov_x E_q[u] > 0.01); the rest have collapsed onto the prior. "
                                  "Consider train.kl_warmup_epochs, a smaller latent_dim, or a weaker decoder",
                                  PosteriorCollapseWarning, stacklevel=2)
            metrics.append(record)
            if run_dir is not None:
                with open(Path(run_dir) / METRICS, "a") as f:
                    f.write(json.dumps(record) + "\n")
                save_checkpoint(Path(run_dir) / CHECKPOINT, vae, optimizer, config, counters)
    finally:
        bar.close()
        vae.kl_weight = 1.0
    if run_dir is not None:
        vae.eval()
        plot_run(run_dir, vae, data.test, metrics)
    return metrics


def _read_metrics(path: Path, up_to_epoch: int) -> List[Dict]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["epoch"] <= up_to_epoch]


def _same_run(a: Dict, b: Dict) -> Optional[str]:
    """The first section.key in which two configs differ in a way a resumed run cannot absorb."""
    for section in ("data", "model"):
        for key in sorted(set(a[section]) | set(b[section])):
            if a[section].get(key) != b[section].get(key):
                return f"{section}.{key}"
    for key in ("batch_size", "estimator", "num_particles", "seed", "beta", "kl_warmup_epochs"):
        if a["train"].get(key) != b["train"].get(key):
            return f"train.{key}"
    if a["optim"].get("name") != b["optim"].get("name"):
        return "optim.name"
    return None


def train(config: Optional[Config] = None, out_dir=None, resume: bool = False) -> Path:
    """Run a whole config: load the data, build the VAE, train it, and fill a run folder.

    Everything that can be wrong with the input (config, data, device, run folder) is checked
    before the folder is created, so bad input leaves nothing behind. Returns the run folder,
    which holds ``config.toml`` (the resolved config), ``metrics.jsonl``, ``checkpoint.pt``,
    ``reconstructions.png``, ``samples.png``, ``elbo.png`` and, for a 2-D latent,
    ``manifold.png``.
    """
    config = (config or Config()).check()
    device = resolve_device(config.train.device)
    if resume:
        if out_dir is None:
            raise RunDirError("--resume needs the run folder (--out RUN_DIR)")
        state = read_checkpoint(Path(out_dir) / CHECKPOINT)
    else:
        if out_dir is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            out_dir = Path("runs") / f"{config.data.name}-{stamp}"
        if Path(out_dir).exists() and (not Path(out_dir).is_dir() or any(Path(out_dir).iterdir())):
            raise RunDirError(f"{out_dir}: already exists and is not empty; use --resume to continue it, "
                              "or another --out")
    d = config.data
    data = load_dataset(d.name, d.path, d.binarize, d.test_fraction, d.download, device=device)
    config = dataclasses.replace(config, data=dataclasses.replace(d, binarize=data.binarize))
    if resume:
        differs = _same_run(state["config"], config.to_dict())
        if differs:
            raise RunDirError(f"{out_dir}: the checkpoint was made with another {differs}; "
                              "resume with the run's own config (omit CONFIG) or start a new run")
    pyro.set_rng_seed(config.train.seed)
    vae = build_vae(config.model, data.event_shape)
    check_data(vae, data, config.train.batch_size)
    resolve_estimator(config.train.estimator, vae)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG).write_text(dumps(config.to_dict()))
    fit(vae, data, config.train, config.optim, run_dir=out_dir, config=config, resume=resume)
    return out_dir
