"""Training: the SVI loop (:func:`fit`) and whole runs with their folders (:func:`train`).

Each step draws a minibatch of M indices from the epoch's permutation of the N training
points, and takes a gradient step on the per-datapoint loss

    loss = -ELBO_hat(minibatch) / N,   ELBO_hat = (N/M) sum_{i in batch} L(theta, phi; x_i),

where ELBO_hat is the Pyro ELBO of the model and guide under ``pyro.plate("data", size=N)``:
an unbiased estimate of the full-data ELBO (Kingma & Welling 2014, eq. 8). Dividing by N
keeps learning rates and weight decay independent of the data set's size.
"""

import contextlib
import copy
import dataclasses
import datetime
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pyro
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .algorithms import ALGORITHMS, NonFinite, algorithm_name, build_algorithm, validation
from .checkpoint import (
    build_model,
    data_fingerprint,
    fingerprint_difference,
    load_model_state,
    new_model,
    read_checkpoint,
    read_run_config,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import Config, TrainConfig, dumps
from .data import Dataset, binarize_split, epoch_order
from .devices import resolve_device
from .errors import ConfigError, PyrovaeError, RunDirError, one_line
from .estimators import resolve_estimator
from .evaluate import active_units, dataset_terms, seeded
from .memory import check_training_memory, meta_model
from .optim import build_optimizer, load_state
from .runfolder import (
    CHECKPOINT,
    CONFIG,
    RunLock,
    append_metrics,
    atomic_write_bytes,
    copy_plugins,
    create_run_dir,
    is_fresh,
    remove_stale,
    write_metrics,
)


class TrainingError(PyrovaeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class PosteriorCollapseWarning(UserWarning):
    """Most latent units are inactive: q(z|x) has collapsed onto the prior for them."""


def kl_weight(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """beta, reached linearly over ``kl_warmup_epochs`` epochs (Bowman et al. 2016; Sønderby et al. 2016)."""
    if cfg.kl_warmup_epochs == 0:
        return cfg.beta
    return cfg.beta * min(1.0, (step + 1) / (cfg.kl_warmup_epochs * steps_per_epoch))


def check_data(model, data: Dataset, batch_size: int) -> None:
    """Reject data that does not fit the model or the batch size, before any training."""
    if tuple(data.event_shape) != tuple(model.event_shape):
        raise ConfigError(f"data points have shape {data.event_shape} but the model expects {model.event_shape}")
    if batch_size > data.num_train:
        raise ConfigError(f"train.batch_size = {batch_size}: larger than the training split ({data.num_train} points)")
    model.check_data(binarize_split(data.train, data.binarize), f"data {data.name!r} (train split)")
    model.check_data(data.test, f"data {data.name!r} (test split)")
    model.dry_run(data.test_batch[:2])


class Interrupted(PyrovaeError):
    """SIGINT or SIGTERM arrived; the run saved a checkpoint at the step it had reached."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT or SIGTERM (or one outside the training loop): stop where we are.

    A ``KeyboardInterrupt``, so no ``except Exception`` swallows it; every file pyrovae writes
    is replaced atomically, so the last checkpoint stays whole."""

    def __init__(self, signal_number: int):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


def fit(model, data: Dataset, train: Optional[TrainConfig] = None, optim: Optional[Dict[str, Any]] = None,
        run_dir=None, config: Optional[Config] = None, resume: bool = False,
        stop_signal: Optional[Callable[[], Optional[int]]] = None, tensorboard_dir=None,
        **train_options) -> List[Dict]:
    """Train ``model`` on ``data`` by stochastic variational inference; return the metrics per epoch.

    :param Model model: the model and guide (a :class:`~pyrovae.Model`, e.g. a :class:`~pyrovae.VAE`).
    :param Dataset data: the splits (see :func:`pyrovae.load_dataset`).
    :param TrainConfig train: epochs, batch size M, estimator, particles L, seed, device, ...
    :param dict optim: an optimizer spec, e.g. ``{"name": "adagrad", "lr": 0.02}`` (default Adam 1e-3).
    :param run_dir: if given, write ``metrics.jsonl``, ``checkpoint.pt`` (after every epoch) and
        the figures there (needs ``config``, the resolved run config that :func:`train` passes).
    :param bool resume: continue from ``run_dir/checkpoint.pt``, bit for bit on the CPU.
    :param stop_signal: polled before every step; when it returns a signal number, the run
        saves a checkpoint at that step and raises :class:`Interrupted` (:func:`train` wires
        SIGINT and SIGTERM to it).
    :param tensorboard_dir: if given, write TensorBoard scalars (ELBO, its reconstruction and
        KL terms, KL weight, learning rate, speed, active units) every epoch and image grids
        (samples, reconstructions) at every evaluation there.
    :param train_options: overrides of ``train``'s fields, e.g. ``epochs=5``.

    Each returned record has ``epoch``, ``step``, ``samples_seen``, ``train_elbo`` (the mean
    of the epoch's minibatch ELBO estimates), ``train_objective`` (the mean of what was
    maximised: the same as ``train_elbo`` unless the estimator is ``iwae`` or the KL is
    weighted), ``kl_weight`` (at the epoch's end), ``test_elbo``, its two terms
    ``test_reconstruction`` and ``test_kl``, and ``active_units`` (every ``eval_every`` epochs
    and after the last, else None), ``train_seconds`` and ``images_per_second``. ELBOs are
    nats per datapoint, higher is better; the reported ELBO is always the true one (beta = 1).
    A :class:`PosteriorCollapseWarning` is issued once if fewer than half of the latent units
    are active at an evaluation after the first epoch.

    A non-finite loss or gradient stops the run at the step where it appears, before the
    parameters change (:class:`TrainingError`), or with ``on_nan = "rollback"`` restores the
    state of the last completed epoch and retries it with the learning rate multiplied by
    ``rollback_lr_factor``, at most ``max_rollbacks`` times.
    """
    try:
        cfg = dataclasses.replace(train or TrainConfig(), **train_options)
    except TypeError as e:
        raise ConfigError(f"fit: {e}") from None
    cfg.check()
    if run_dir is not None and config is None:
        raise ValueError("fit(run_dir=...) needs the run's config; use pyrovae.train(config, out_dir) instead")
    trainer = _Trainer(model, data, cfg, optim or {"name": "adam", "lr": 1e-3}, run_dir, config, stop_signal)
    if tensorboard_dir is not None and trainer.rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        trainer.tensorboard = SummaryWriter(str(tensorboard_dir))
    checkpoint = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    if resume and checkpoint.exists():
        state = read_checkpoint(checkpoint)
        differs = fingerprint_difference(state["data"], trainer.fingerprint)
        if differs:
            raise RunDirError(f"{checkpoint}: the data differ from the data it was trained on: {differs}; "
                              "resume with the same data, or start a new run")
        try:
            trainer.restore(state)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, OverflowError) as e:  # e.g. RNG states
            raise RunDirError(f"{checkpoint}: malformed checkpoint: its training state does not fit the run "
                              f"({type(e).__name__}: {one_line(str(e), 120)})") from None
        trainer.metrics = [dict(r) for r in state["metrics"]]
        trainer.saved_epoch = trainer.counters["epoch"]
    else:  # a new run, or one resumed before its first checkpoint: from the start
        pyro.set_rng_seed(cfg.seed)
        trainer.noise.manual_seed(cfg.seed * 1_000_003 - 1)  # apart from the data-order seeds (seed, epoch)
    if resume and trainer.writes:
        # metrics.jsonl may lack the checkpoint's last epoch, or hold epochs past it or a torn
        # line (a kill, a full disk): the checkpoint's records replace it, atomically.
        write_metrics(run_dir, trainer.metrics)
    return trainer.run()


def _where(epoch, step, batch, batches) -> str:
    return f"at epoch {epoch}, step {step} (batch {batch} of {batches})"


class _Trainer:
    """The state of one training run and the loop over it (used by :func:`fit`)."""

    def __init__(self, model, data, cfg: TrainConfig, optim, run_dir, config, stop_signal):
        self.cfg, self.run_dir, self.config, self.stop_signal = cfg, run_dir, config, stop_signal
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.data = data.to(self.device)
        check_data(self.model, self.data, cfg.batch_size)
        self.estimator = resolve_estimator(cfg.estimator, model, self.data.test_batch[:2])
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        #: what a step maximises (train.algorithm): the loop only calls its loss
        self.algorithm = build_algorithm(model, cfg, self.estimator, self.data.num_train, self.world)
        # Training noise (dynamic binarization, the family's reparameterization noise) is drawn for
        # the whole global batch from this generator, the same on every rank, and each rank takes
        # its shard: a run on K processes sees the same noise as on one, and resumes on any K.
        self.noise = torch.Generator(device=self.device)
        #: beta, the weight of the KL term at this step (an argument of the estimators, not model state)
        self.beta = 1.0
        self.optimizer = build_optimizer(optim, model.parameters())
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.n, self.m = self.data.num_train, cfg.batch_size
        self.steps_per_epoch = -(-self.n // self.m)
        # epoch, step and samples_seen count completed work; epoch_* hold a half-done epoch
        # (after an interruption): its next step and running sums.
        self.counters = {"epoch": 0, "step": 0, "samples_seen": 0, "epoch_step": 0, "rollbacks": 0,
                         "epoch_loss": 0.0, "epoch_elbo": 0.0, "epoch_seconds": 0.0}
        self.metrics: List[Dict] = []
        self.warned = False
        self.tensorboard = None
        #: the data's shapes and hash, recorded in every checkpoint; --resume and evaluate compare them
        self.fingerprint = data_fingerprint(data) if run_dir is not None else None
        self.saved_epoch: Optional[int] = None

    # -- state -------------------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": {**rng_state(), "noise": self.noise.get_state()}, "counters": dict(self.counters),
                "algorithm": self.algorithm.state_dict()}

    def restore(self, state: Dict[str, Any]) -> None:
        load_model_state(self.model, state["model"], Path(self.run_dir or ".") / CHECKPOINT)
        load_state(self.optimizer, state["optimizer"])
        set_rng_state(state["rng"])
        self.noise.set_state(state["rng"]["noise"])
        self.counters.update(state["counters"])
        self.algorithm.load_state_dict(state.get("algorithm", {}))

    @property
    def writes(self) -> bool:
        """Only rank 0 writes the run folder."""
        return self.run_dir is not None and self.rank == 0

    def kept(self) -> str:
        """What a failed write leaves, for its message."""
        if self.saved_epoch is None:
            return "; no checkpoint was written yet"
        return f"; the last good checkpoint (epoch {self.saved_epoch}) is kept"

    def save(self) -> None:
        """Write the checkpoint (with the metrics records so far) before anything else of the epoch."""
        if self.writes:
            save_checkpoint(Path(self.run_dir) / CHECKPOINT, self.state(), self.model.event_shape, self.config,
                            self.fingerprint, self.metrics, self.kept(), self.data.num_classes)
            self.saved_epoch = self.counters["epoch"]

    def poll(self) -> Optional[int]:
        """The signal number the run was asked to stop by, if any (the same on every rank)."""
        signal_number = self.stop_signal() if self.stop_signal else None
        if self.world > 1:  # every rank stops at the same step, or the collectives would hang
            flag = torch.tensor([signal_number or 0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signal_number = int(flag.item()) or None
        return signal_number

    def stop_after_epoch(self, signal_number: Optional[int], what: str) -> None:
        """Raise :class:`Interrupted` if a signal came while the epoch's checkpoint was taken care of."""
        if signal_number:
            raise Interrupted(f"interrupted by {signal.Signals(signal_number).name} {what}; "
                              + (f"checkpoint of epoch {self.counters['epoch']} saved: resume with "
                                 f"pyrovae train --out {self.run_dir} --resume"
                                 if self.run_dir is not None else "no run folder, nothing saved"),
                              signal_number)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> List[Dict]:
        cfg = self.cfg
        bar = tqdm(total=cfg.epochs * self.steps_per_epoch, unit="step", file=sys.stderr,
                   disable=not cfg.progress or self.rank != 0,
                   initial=self.counters["epoch"] * self.steps_per_epoch + self.counters["epoch_step"],
                   dynamic_ncols=True)
        # The data were checked once before training; per-step validation of every distribution's
        # arguments would cost a pass over the batch and a sync per step (non-finite values are
        # still caught, by the check on the loss and gradients).
        with validation(self.algorithm):
            try:
                last_good = copy.deepcopy(self.state())
                while self.counters["epoch"] < cfg.epochs:
                    try:
                        self.epoch(self.counters["epoch"] + 1, bar)
                        last_good = copy.deepcopy(self.state())
                    except NonFinite as e:
                        self.roll_back(e, last_good, bar)
                    except (MemoryError, RuntimeError) as e:
                        if not _out_of_memory(e):
                            raise
                        raise TrainingError(f"out of memory in epoch {self.counters['epoch'] + 1} "
                                            f"({type(e).__name__}); lower train.batch_size, train.num_particles "
                                            f"or train.eval_particles, or the networks' sizes{self.kept()}") from None
            finally:
                bar.close()
                self.beta = 1.0
                if self.tensorboard is not None:
                    self.tensorboard.close()
        if self.writes:
            from .plots import plot_run  # the figures' module sets matplotlib's backend: only when plotting

            self.model.eval()
            try:
                plot_run(self.run_dir, self.model, self.data.test_batch, self.metrics)
            except RunDirError as e:
                raise RunDirError(f"{e}; training finished: the checkpoint of epoch {self.counters['epoch']} "
                                  "is complete") from None
        # a signal during the last evaluation or the figures: the checkpoint is complete, and the exit says so
        self.stop_after_epoch(self.poll(), f"after the last epoch ({self.counters['epoch']})")
        return self.metrics

    def roll_back(self, error: NonFinite, last_good: Dict[str, Any], bar) -> None:
        """Restore the last completed epoch with a smaller learning rate, or give up."""
        cfg = self.cfg
        k = self.counters["rollbacks"] + 1  # the k-th rollback of the run runs at lr * factor^k
        if cfg.on_nan != "rollback" or k > cfg.max_rollbacks:
            raise TrainingError(str(error) + self._advice()) from None
        self.restore(copy.deepcopy(last_good))
        # the restored optimizer already carries the factors of the rollbacks before its epoch
        factor = cfg.rollback_lr_factor ** (k - self.counters["rollbacks"])
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
        self.counters["rollbacks"] = k
        bar.n = self.counters["epoch"] * self.steps_per_epoch + self.counters["epoch_step"]
        tqdm.write(f"pyrovae: {error}; rolled back to epoch {self.counters['epoch']}, learning rate now "
                   f"{self.optimizer.param_groups[0]['lr']:.3g} (rollback {k} of {cfg.max_rollbacks})",
                   file=sys.stderr)

    def epoch(self, epoch: int, bar) -> None:
        cfg, c, n, m = self.cfg, self.counters, self.n, self.m
        batches = epoch_order(n, cfg.seed, epoch, self.device).split(m)
        total = torch.tensor(c["epoch_loss"], device=self.device)  # -sum_i objective_i so far
        total_elbo = torch.tensor(c["epoch_elbo"], device=self.device)  # -sum_i ELBO_i so far
        start = time.perf_counter() - c["epoch_seconds"]
        for i in range(c["epoch_step"], len(batches)):
            signal_number = self.poll()
            if signal_number:
                c.update(epoch_step=i, epoch_loss=total.item(), epoch_elbo=total_elbo.item(),
                         epoch_seconds=time.perf_counter() - start)
                self.save()
                where = f"epoch {epoch}, step {c['step'] + i}"
                raise Interrupted(f"interrupted by {signal.Signals(signal_number).name} at {where}; "
                                  + (f"checkpoint saved: resume with pyrovae train --out {self.run_dir} --resume"
                                     if self.run_dir is not None else "no run folder, nothing saved"),
                                  signal_number)
            batch, eps = self.minibatch(batches[i])
            self.beta = kl_weight(cfg, c["step"] + i, self.steps_per_epoch)
            where = (epoch, c["step"] + i + 1, i + 1, len(batches))
            for update in range(self.algorithm.updates_per_batch):  # 1, but for mcem's M-steps
                try:
                    step = self.algorithm.loss(batch, eps, self.beta, batches[i].numel(),
                                               batches[i][self.rank::self.world], update)
                except NonFinite as e:
                    raise NonFinite(f"{e} {_where(*where)}") from None
                loss = step.loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # One sync per step: a non-finite loss or gradient is caught before it reaches the parameters.
                checks = torch.stack([loss.detach()] + [p.grad.sum() for p in self.params if p.grad is not None])
                if not bool(torch.isfinite(checks).all()):
                    what = "loss" if not torch.isfinite(loss).item() else "gradient"
                    raise NonFinite(f"non-finite {what} {_where(*where)}")
                self.optimizer.step()
            total += step.objective_sum  # the minibatch's last update
            total_elbo += step.elbo_sum
            bar.update()
            if i % 20 == 0:
                bar.set_postfix(epoch=epoch, loss=f"{total.item() / (i * m + len(batch)):.2f}")
        seconds = time.perf_counter() - start
        if self.world > 1:  # the epoch's sums over all ranks' shards
            sums = torch.stack([total, total_elbo])
            dist.all_reduce(sums)
            total, total_elbo = sums[0], sums[1]
        c.update(epoch=epoch, step=c["step"] + len(batches), samples_seen=c["samples_seen"] + n, epoch_step=0,
                 epoch_loss=0.0, epoch_elbo=0.0, epoch_seconds=0.0)
        record = {"epoch": epoch, "step": c["step"], "samples_seen": c["samples_seen"],
                  "train_elbo": -total_elbo.item() / n, "train_objective": -total.item() / n,
                  "kl_weight": self.beta, "test_elbo": None, "test_reconstruction": None, "test_kl": None,
                  "active_units": None, "train_seconds": seconds, "images_per_second": n / seconds}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            self.evaluate(record)
            bar.set_postfix(epoch=epoch, elbo=f"{record['train_elbo']:.2f}", test_elbo=f"{record['test_elbo']:.2f}")
        self.metrics.append(record)
        # The checkpoint (which holds the records) first, then the metrics line: after a kill
        # or a write failure between the two, --resume rebuilds metrics.jsonl from the checkpoint.
        self.save()
        if self.writes:
            append_metrics(self.run_dir, record, self.kept())
        if self.tensorboard is not None:
            self.log_tensorboard(record)
        self.stop_after_epoch(self.poll() if epoch < cfg.epochs else None, f"after epoch {epoch}")

    def minibatch(self, index: torch.Tensor):
        """This rank's shard of a global minibatch (a :class:`~pyrovae.Batch`), and the family's
        noise for it (torch engine; :meth:`~pyrovae.Model.noise_shape`).

        The noise is drawn for the whole global batch (every rank draws the same), then sharded
        like the points: rank r of K takes positions r, r + K, r + 2K, ... of the batch.
        """
        shard = slice(self.rank, None, self.world)
        uniform = None
        if self.data.binarize == "dynamic":
            uniform = torch.rand((index.numel(), *self.data.event_shape), generator=self.noise,
                                 device=self.device)[shard]
        batch = self.data.minibatch(index[shard], uniform)
        eps = None
        shape = self.model.noise_shape(index.numel(), self.cfg.num_particles) if self.algorithm.draws_noise else None
        if shape is not None:  # (particles, global batch, ...): sharded along the batch
            eps = torch.randn(shape, generator=self.noise, device=self.device)[:, shard]
        return batch, eps

    def evaluate(self, record: Dict) -> None:
        model, epoch = self.model, record["epoch"]
        test = self.data.test_batch
        terms = dataset_terms(model, test, self.cfg.eval_particles, seed=self.cfg.seed)
        record.update(test_elbo=terms["elbo"], test_reconstruction=terms["reconstruction"], test_kl=terms["kl"])
        record["active_units"], activity = active_units(model, test)
        units = int(activity.shape[0])
        if 2 * record["active_units"] < units and epoch > 1 and not self.warned and self.rank == 0:
            self.warned = True
            warnings.warn(f"epoch {epoch}: only {record['active_units']} of {units} latent units are "
                          "active (Cov_x E_q[u] > 0.01); the rest have collapsed onto the prior. "
                          "Consider train.kl_warmup_epochs, a smaller latent_dim, or a weaker decoder",
                          PosteriorCollapseWarning, stacklevel=5)

    def log_tensorboard(self, record: Dict) -> None:
        """Scalars every epoch, image grids at evaluations (drawn without touching the training RNG)."""
        from .plots import as_images, image_grid

        tb, epoch = self.tensorboard, record["epoch"]
        for tag, key in (("train/elbo", "train_elbo"), ("train/objective", "train_objective"),
                         ("train/kl_weight", "kl_weight"), ("train/images_per_second", "images_per_second"),
                         ("test/elbo", "test_elbo"), ("test/reconstruction", "test_reconstruction"),
                         ("test/kl", "test_kl"), ("test/active_units", "active_units")):
            if record[key] is not None:
                tb.add_scalar(tag, record[key], epoch)
        tb.add_scalar("train/learning_rate", self.optimizer.param_groups[0]["lr"], epoch)
        if record["test_elbo"] is not None:
            with torch.no_grad(), seeded(self.data.test, self.cfg.seed):
                x = self.data.test_batch[:32]
                grids = {"samples": self.model.sample(64),
                         "reconstructions": torch.cat([x.x, self.model.reconstruct(x)])}
            for tag, images in grids.items():
                grid = image_grid(as_images(images, self.model.event_shape), 8 if tag == "samples" else 16)
                tb.add_image(tag, grid.clip(0, 1), epoch, dataformats="HWC" if grid.ndim == 3 else "HW")
        tb.flush()

    def _advice(self) -> str:
        lr = self.optimizer.param_groups[0]["lr"]
        kept = (f"the last good checkpoint (epoch {self.counters['epoch']}) is kept in {self.run_dir}"
                if self.run_dir is not None and self.counters["epoch"] > 0 else "no checkpoint was written")
        return (f"; likely causes: a learning rate too high (optim.lr = {lr:.3g}), a learned likelihood scale "
                "shrinking to 0 (raise min_scale), extreme data values; "
                f"{kept}; train.on_nan = 'rollback' retries with a smaller learning rate")


def _out_of_memory(e: BaseException) -> bool:
    """Whether an exception is an allocation failure (torch's CPU allocator raises a RuntimeError)."""
    return isinstance(e, MemoryError) or isinstance(e, getattr(torch, "OutOfMemoryError", MemoryError)) \
        or "can't allocate memory" in str(e) or "out of memory" in str(e).lower()


def _same_run(a: Dict, b: Dict) -> Optional[str]:
    """The first section.key in which two configs differ in a way a resumed run cannot absorb."""
    for section in ("data", "model"):
        for key in sorted(set(a[section]) | set(b[section])):
            if a[section].get(key) != b[section].get(key):
                return f"{section}.{key}"
    defaults = dataclasses.asdict(TrainConfig())
    algorithm = algorithm_name(b["train"].get("algorithm", defaults["algorithm"]))
    keys = ALGORITHMS.get(algorithm).resume_keys if algorithm in ALGORITHMS else ()
    for key in ("algorithm", *keys):
        if a["train"].get(key, defaults[key]) != b["train"].get(key, defaults[key]):
            return f"train.{key}"
    if a["optim"].get("name") != b["optim"].get("name"):
        return "optim.name"
    return None


def train(config: Optional[Config] = None, out_dir=None, resume: bool = False, model=None) -> Path:
    """Run a whole config: load the data, build the model, train it, and fill a run folder.

    ``model``: a model built in Python (its own networks, say) to train instead of the one the
    config's ``[model]`` names; the run folder records its weights, and
    ``pyrovae.load(run, model=an_instance_like_it)`` loads them back.

    Everything that can be wrong with the input (config, data, device, run folder) is checked
    before the folder is created, so bad input leaves nothing behind. Returns the run folder,
    which holds ``config.toml`` (the resolved config), ``metrics.jsonl``, ``checkpoint.pt``,
    ``reconstructions.png``, ``samples.png``, ``elbo.png`` and, for a 2-D latent,
    ``manifold.png``.

    Started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), it trains data-parallel
    with PyTorch's DistributedDataParallel: backend ``gloo`` on the CPU, ``nccl`` on GPUs (rank
    r on ``cuda:LOCAL_RANK``); each rank takes its shard of every global minibatch of
    ``train.batch_size`` points, the ranks' gradients are averaged, and only rank 0 writes.
    """
    config = (config or Config()).check()
    with _distributed(config.train.device) as device:
        return _train(config, out_dir, resume, device, model)


@contextlib.contextmanager
def _distributed(device_name: str):
    """Join the process group torchrun describes (if any) and yield this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield resolve_device(device_name if world <= 1 else _rank_device(device_name))
        return
    device = resolve_device(_rank_device(device_name))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def _rank_device(device_name: str) -> str:
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if device_name.startswith("cuda") else device_name


def _train(config: Config, out_dir, resume: bool, device: torch.device, model=None) -> Path:
    rank = dist.get_rank() if dist.is_initialized() else 0
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    if resume:
        if out_dir is None:
            raise RunDirError("--resume needs the run folder (--out RUN_DIR)")
        out_dir = Path(out_dir)
        if not (out_dir / CONFIG).is_file():
            raise RunDirError(f"{out_dir}: not a pyrovae run folder (no {CONFIG})")
        checkpoint = out_dir / CHECKPOINT
        # the run's record of its config: the checkpoint's, or before the first one, config.toml's
        saved = read_checkpoint(checkpoint)["config"] if checkpoint.exists() else read_run_config(out_dir).to_dict()
    elif out_dir is not None and Path(out_dir).exists() and (not Path(out_dir).is_dir() or not is_fresh(out_dir)):
        raise RunDirError(f"{out_dir}: already exists and is not empty; use --resume to continue it, "
                          "or another --out")
    data = config.data.load(device)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, binarize=data.binarize))
    if resume:
        differs = _same_run(saved, config.to_dict())
        if differs:
            raise RunDirError(f"{out_dir}: the run was made with another {differs}; "
                              "resume with the run's own config (omit CONFIG) or start a new run")
    # Sizes that cannot be allocated are refused now, from a model built on the meta device.
    t = config.train
    shapes = model if model is not None else meta_model(
        lambda: new_model(config.model, data.event_shape, data.num_classes))
    if shapes is not None:
        check_training_memory(shapes, t.batch_size, t.num_particles, t.eval_particles,
                              str(config.optim.get("name")), device)
    pyro.set_rng_seed(config.train.seed)
    if model is None:
        model = build_model(config.model, data.event_shape, data.num_classes)
    check_data(model, data, config.train.batch_size)
    resolve_estimator(config.train.estimator, model, data.test_batch[:2])

    if dist.is_initialized():
        dist.barrier()  # every rank has checked its input before rank 0 creates anything
    lock = RunLock(".", "write")
    try:
        out_dir = _on_rank0(lambda: _claim_run_dir(config, out_dir, resume, lock), rank)
        with _stop_on_signals() as stop_signal:
            fit(model, data, dataclasses.replace(config.train, device=str(device)), config.optim, run_dir=out_dir,
                config=config, resume=resume, stop_signal=stop_signal,
                tensorboard_dir=out_dir / "tensorboard" if config.log.tensorboard else None)
    finally:
        lock.release()
    return out_dir


def _claim_run_dir(config: Config, out_dir, resume: bool, lock: RunLock) -> Path:
    """Create (or, resuming, open) the run folder, take its lock for the whole run, remove what
    a killed writer left, and write the resolved config (a new run only)."""
    if resume:
        out_dir = Path(out_dir)
    else:
        default = f"runs/{config.data.name}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        out_dir = create_run_dir(out_dir, default=default)
    lock.run_dir = out_dir
    lock.acquire()
    if not resume and not is_fresh(out_dir):  # another run got in between our mkdir and our lock
        raise RunDirError(f"{out_dir}: already exists and is not empty; use --resume to continue it, or another --out")
    remove_stale(out_dir)
    tensorboard = out_dir / "tensorboard"
    if tensorboard.is_symlink():
        raise RunDirError(f"{tensorboard}: is a symbolic link; a run folder writes only inside itself")
    if not resume:
        text = dumps(config.to_dict()).encode()
        atomic_write_bytes(out_dir / CONFIG, lambda f: f.write(text))
        copy_plugins(config.plugins.modules, out_dir)
    return out_dir


def _on_rank0(fn: Callable[[], Path], rank: int) -> Path:
    """``fn()`` on rank 0 (the only writer); under torchrun every rank learns its result, or
    that it failed (then each raises, instead of waiting forever in a collective)."""
    if not dist.is_initialized():
        return fn()
    box: List[Any] = [None]
    error: Optional[PyrovaeError] = None
    if rank == 0:
        try:
            box[0] = str(fn())
        except PyrovaeError as e:
            error = e
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is None:
        raise RunDirError("rank 0 could not open the run folder; see its message")
    return Path(box[0])


@contextlib.contextmanager
def _stop_on_signals():
    """Turn SIGINT and SIGTERM into a flag that the loop polls, so it can save a checkpoint
    at the current step (or the end of the epoch being evaluated) and stop cleanly; a second
    signal stops at once (:class:`StoppedAtOnce`). Only possible in the main thread."""
    received: List[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def handler(number, frame):
        if received:
            raise StoppedAtOnce(number)
        received.append(number)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def stop_at_once_on_signals():
    """SIGINT and SIGTERM raise :class:`StoppedAtOnce` where the program is (``evaluate``,
    ``sample``: nothing to save), so the process exits with 128 + the signal number."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(number, frame):
        raise StoppedAtOnce(number)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
