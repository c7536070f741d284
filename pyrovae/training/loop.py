"""The training loop: stochastic variational inference over minibatches (:func:`fit`).

Each step draws a minibatch of M indices from the epoch's permutation of the N training
points, and takes a gradient step on the per-datapoint loss

    loss = -ELBO_hat(minibatch) / N,   ELBO_hat = (N/M) sum_{i in batch} L(theta, phi; x_i),

where ELBO_hat is the model's ELBO estimate under ``pyro.plate("data", size=N)``: an unbiased
estimate of the full-data ELBO (Kingma & Welling 2014, eq. 8). Dividing by N keeps learning
rates and weight decay independent of the data set's size. What a step maximises is the
algorithm's (:mod:`pyrovae.infer.algorithms`); the loop draws the batch and the noise, takes the
algorithm's loss, runs backward and the finiteness check, and steps the optimizer.

Everything around the loop attaches as a :class:`Callback`: the run folder (checkpoints,
metrics, figures: :class:`pyrovae.app.runfolder.RunFolder`), TensorBoard, anything a user adds. The
loop itself writes nothing.
"""

import copy
import dataclasses
import signal
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

import pyro
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from pyrovae.data.datasets import as_dataset
from pyrovae.data.sampling import epoch_plan, steps_per_epoch
from pyrovae.devices import release_freed_memory, resolve_device
from pyrovae.errors import ConfigError, PyrovaeError
from pyrovae.infer.algorithms import NonFinite, build_algorithm, pyro_validation
from pyrovae.infer.estimators import resolve_estimator
from pyrovae.infer.evaluate import classifier
from pyrovae.models.base import per_minibatch_labels
from pyrovae.progress import progress_bar
from pyrovae.rng import rng_state, set_rng_state
from pyrovae.training.callbacks import Callback
from pyrovae.training.checks import as_labeled, check_run_data, dry_training_batches
from pyrovae.training.early_stopping import EarlyStopping, best_so_far
from pyrovae.training.evaluation import held_out_numbers
from pyrovae.training.optim import build_optimizer, default_optimizer, load_state
from pyrovae.training.precision import MixedPrecision, float32_outputs
from pyrovae.training.records import Counters, TrainingState, epoch_record
from pyrovae.training.schedules import build_schedule, schedule_spec
from pyrovae.training.state import kept_buffers, load_model_state
from pyrovae.training.train_config import TrainConfig, check_against_data, resolved_labeled_weight


class TrainingError(PyrovaeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


class PosteriorCollapseWarning(UserWarning):
    """Most latent units are inactive: q(z|x) has collapsed onto the prior for them."""


class CutShort(KeyboardInterrupt):
    """A stop request that cuts the epoch's evaluation short: the loop saves the epoch without its
    test numbers, then stops (a stop never waits for an evaluation of any length)."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


class Interrupted(PyrovaeError):
    """SIGINT or SIGTERM arrived; the run saved a checkpoint at the step it had reached."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


def fit(model, data, train: Optional[TrainConfig] = None, optim: Optional[Dict[str, Any]] = None,
        callbacks: Sequence[Callback] = (), stop_signal: Optional[Callable[[], Optional[int]]] = None,
        test=None, test_fraction: float = 0.1, in_memory="auto", num_workers: int = 0,
        **train_options) -> List[Dict]:
    """Train ``model`` on ``data`` by stochastic variational inference; return the metrics per epoch.

    :param Model model: the model and guide (a :class:`~pyrovae.Model`, e.g. a :class:`~pyrovae.VAE`).
    :param data: a :class:`~pyrovae.Dataset` (its splits: see :func:`pyrovae.load_dataset`), or a
        map-style ``torch.utils.data.Dataset`` whose items are ``x`` or ``(x, y)``
        (:func:`~pyrovae.data.datasets.as_dataset`), with ``test=`` its held-out set (else
        ``test_fraction`` of it is held out by a fixed permutation), read a batch at a time: held in
        memory on the device when it fits (``in_memory``: "auto", True, False), else streamed with
        ``num_workers`` processes reading its batches ahead (see ``docs/your-data.md``).
    :param TrainConfig train: epochs, batch size M, estimator, particles L, seed, device, ...
    :param dict optim: an optimizer spec, e.g. ``{"name": "adagrad", "lr": 0.02}`` (default Adam 1e-3).
    :param callbacks: :class:`Callback` objects around the loop (:func:`pyrovae.train` adds the
        run folder's: checkpoints, metrics, figures, TensorBoard; a resumed run restores there).
    :param stop_signal: polled before every step and after every epoch; when it returns a signal
        number, the callbacks save what they keep and the run raises :class:`Interrupted`
        (:func:`pyrovae.train` wires SIGINT and SIGTERM to it).
    :param train_options: overrides of ``train``'s fields, e.g. ``epochs=5``.

    Each returned record has ``epoch``, ``step``, ``samples_seen``, ``train_elbo`` (the mean
    of the epoch's minibatch ELBO estimates), ``train_objective`` (the mean of what was
    maximised: the same as ``train_elbo`` unless the estimator is ``iwae`` or the KL is
    weighted), ``beta`` (the KL weight at the epoch's end), ``test_elbo``, its two terms
    ``test_reconstruction`` and ``test_kl``, ``active_units`` and, for a family that classifies
    (m2), ``test_accuracy`` (every ``eval_every`` epochs and after the last, else None),
    ``train_seconds`` and ``images_per_second``. ELBOs are nats per datapoint, higher is better;
    the reported ELBO is always the true one (beta = 1).
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
    data = as_dataset(data, test, test_fraction, in_memory=in_memory, device=resolve_device(cfg.device),
                      num_workers=num_workers)
    if train is None and data.labeled is not None:  # the family's settings under a label budget, unless given
        under_budget = getattr(model, "training_under_budget", None)
        cfg = dataclasses.replace(cfg, **(under_budget(set(train_options), cfg.batch_size, cfg.engine)
                                          if under_budget else {}))
        cfg.check()
    trainer = Trainer(model, data, cfg, optim or default_optimizer(), callbacks, stop_signal)
    return trainer.run()


def _where(epoch, step, batch, batches) -> str:
    return f"at epoch {epoch}, step {step} (batch {batch} of {batches})"


class Trainer:
    """The state of one training run and the loop over it (used by :func:`fit`)."""

    def __init__(self, model, data, cfg: TrainConfig, optim, callbacks: Sequence[Callback] = (), stop_signal=None):
        self.cfg, self.callbacks, self.stop_signal = cfg, list(callbacks), stop_signal
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.data = data.to(self.device)
        #: whether the epochs are all-labelled and all-unlabelled minibatches (labels = "per_minibatch")
        per_minibatch = per_minibatch_labels(model, cfg.engine)
        self.split_labels = per_minibatch and self.data.labeled is not None
        if per_minibatch and cfg.labeled_per_batch:
            raise ConfigError(f"train.labeled_per_batch = {cfg.labeled_per_batch}: model ({type(model).__name__}) "
                              "takes all-labelled and all-unlabelled minibatches (labels = 'per_minibatch'), not "
                              "labelled points in every minibatch; leave it out (train.labeled_weight sets how "
                              "often the labelled minibatches come)")
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        #: what a step maximises (train.algorithm): the loop only calls its loss
        self.estimator, self.algorithm = prepared_algorithm(self.model, self.data, cfg, self.data.num_train,
                                                            self.world, self.split_labels, cfg.batch_size)
        # Training noise (dynamic binarization, the family's reparameterization noise) is drawn for
        # the whole global batch from this generator, the same on every rank, and each rank takes
        # its shard: a run on K processes sees the same noise as on one, and resumes on any K.
        self.noise = torch.Generator(device=self.device)
        #: beta, the weight of the KL term at this step (an argument of the estimators, not model state)
        self.beta = 1.0
        #: the learning rate of the last step taken (an epoch's record holds its last step's)
        self.step_lr: Optional[float] = None
        self.optimizer = build_optimizer(optim, model.parameters())
        #: train.precision: autocast around the step's forward pass, a gradient scaler for float16
        self.precision = MixedPrecision(cfg.precision, self.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.n, self.m = self.data.num_train, cfg.batch_size
        num_labeled = 0 if self.data.labeled is None else int(self.data.labeled.sum())
        has_validation = self.data.validation_split is not None
        check_against_data(cfg, self.data.labeled is not None, has_validation)
        #: how many times a labelled point counts in the objective (data.epoch_plan)
        self.labeled_weight = resolved_labeled_weight(cfg.labeled_weight, self.n, num_labeled)
        #: the number of training points as the objective counts them (a labelled one labeled_weight times)
        self.weighted_n = self.n + (self.labeled_weight - 1) * num_labeled
        self.steps_per_epoch = steps_per_epoch(self.n, self.m, cfg.labeled_per_batch, num_labeled,
                                               self.labeled_weight, self.split_labels)
        #: the learning-rate schedule (optim.schedule), stepped per step, epoch or evaluation
        self.schedule = build_schedule(schedule_spec(optim), self.optimizer, cfg.epochs, self.steps_per_epoch,
                                       has_validation)
        #: train.early_stopping, or None
        self.stopping = None if cfg.early_stopping is None else EarlyStopping.from_spec(cfg.early_stopping)
        if self.stopping is not None and self.stopping.metric.endswith("accuracy") \
                and classifier(model, self.data.test_head(2)) is None:
            raise ConfigError(f"train.early_stopping.metric = {self.stopping.metric!r}: the model "
                              f"({type(model).__name__}) does not classify")
        #: the metric the best epoch (best.pt) is chosen by: early stopping's, else the validation ELBO, if any
        self.best_metric = (self.stopping.metric if self.stopping is not None
                            else "validation_elbo" if has_validation else None)
        self.counters = Counters()
        self.metrics: List[Dict] = []
        self.warned = False
        # a new run starts from the seed; a callback restoring a checkpoint (on_start) overrides it
        pyro.set_rng_seed(cfg.seed)
        self.noise.manual_seed(cfg.seed * 1_000_003 - 1)  # apart from the data-order seeds (seed, epoch)

    # -- state -------------------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        """What a checkpoint holds to continue the run bit for bit."""
        return TrainingState(model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                             rng={**rng_state(), "noise": self.noise.get_state()}, counters=self.counters.as_dict(),
                             algorithm=self.algorithm.state_dict(), schedule=self.schedule.state_dict(),
                             scaler=self.precision.state_dict()).as_dict()

    def restore(self, state: Dict[str, Any], where="checkpoint") -> None:
        """Continue from a training state (:meth:`state`, or a checkpoint holding one)."""
        state = TrainingState.of(state)
        load_model_state(self.model, state.model, where)
        load_state(self.optimizer, state.optimizer)
        set_rng_state(state.rng)
        self.noise.set_state(state.rng["noise"])
        self.counters.update(state.counters)
        self.algorithm.load_state_dict(state.algorithm)
        self.schedule.load_state_dict(state.schedule)
        self.precision.load_state_dict(state.scaler)

    # -- the best epoch and early stopping (functions of the records: see pyrovae.training.early_stopping) --
    def best(self):
        """The best whole epoch so far by :attr:`best_metric` (a :class:`~pyrovae.training.early_stopping.Best`),
        or None (no such metric, or no evaluation yet). A step budget's partial epoch does not count."""
        if self.best_metric is None:
            return None
        whole = [r for r in self.metrics if self.is_whole(r)]
        return best_so_far(whole, self.best_metric, self.stopping.min_delta if self.stopping else 0.0)

    def is_whole(self, record: Dict) -> bool:
        """Whether a record is of a whole epoch (not the first part of one that a step budget ended)."""
        return record["step"] >= record["epoch"] * self.steps_per_epoch

    def is_best(self, record: Dict) -> bool:
        """Whether ``record`` (the last epoch's) is the best epoch so far: best.pt is its state."""
        best = self.best()
        return best is not None and best.epoch == record["epoch"] and best.since == 0 \
            and self.is_whole(record)

    def stopped_early(self) -> bool:
        """Whether early stopping's patience has run out (evaluations without an improvement)."""
        best = self.best() if self.stopping is not None else None
        return best is not None and best.since >= self.stopping.patience

    def poll(self) -> Optional[int]:
        """The signal number the run was asked to stop by, if any (the same on every rank)."""
        signal_number = self.stop_signal() if self.stop_signal else None
        if self.world > 1:  # every rank stops at the same step, or the collectives would hang
            flag = torch.tensor([signal_number or 0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signal_number = int(flag.item()) or None
        return signal_number

    def stop(self, signal_number: int, where: str, mid_epoch: bool) -> None:
        """The callbacks keep what they keep; then :class:`Interrupted` says so."""
        notes = [note for note in (cb.on_interrupt(self, mid_epoch) for cb in self.callbacks) if note]
        raise Interrupted(f"interrupted by {signal.Signals(signal_number).name} {where}; "
                          + ("; ".join(notes) or "no run folder, nothing saved"), signal_number)

    def kept(self) -> str:
        """What survives a failure, as the callbacks say (for messages)."""
        notes = [note for note in (cb.kept() for cb in self.callbacks) if note]
        return "; ".join(notes) if notes else "no checkpoint was written"

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> List[Dict]:
        cfg = self.cfg
        try:
            for callback in self.callbacks:
                callback.on_start(self)
            release_freed_memory()  # what the checks' and the fingerprint's sweeps left in the heap
            total = cfg.epochs * self.steps_per_epoch
            bar = progress_bar(total=min(total, cfg.max_steps) if cfg.max_steps else total, unit="step",
                               disable=not cfg.progress or self.rank != 0,
                               initial=self.counters["epoch"] * self.steps_per_epoch + self.counters["epoch_step"])
            # The data were checked once before training; per-step validation of every distribution's
            # arguments would cost a pass over the batch and a sync per step (non-finite values are
            # still caught, by the check on the loss and gradients).
            with pyro_validation(self.algorithm), float32_outputs(self.model, self.precision.dtype is not None):
                try:
                    last_good = copy.deepcopy(self.state())
                    while self.counters["epoch"] < cfg.epochs and not self.out_of_steps() and not self.stopped_early():
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
                                                f"or train.eval_particles, or the networks' sizes; "
                                                f"{self.kept()}") from None
                finally:
                    bar.close()
                    self.beta = 1.0
            self.model.eval()
            if self.stopped_early() and self.rank == 0:
                best = self.best()
                tqdm.write(f"pyrovae: stopped early after epoch {self.counters['epoch']}: {self.best_metric} has not "
                           f"improved by more than {self.stopping.min_delta:g} in {best.since} evaluations; the best, "
                           f"{best.value:.4f}, was at epoch {best.epoch}", file=sys.stderr)
            for callback in self.callbacks:
                callback.on_end(self)
            # a signal during the last evaluation or the figures: the checkpoint is complete, and the exit says so
            signal_number = self.poll()
            if signal_number:
                self.stop(signal_number, f"after the last epoch ({self.counters['epoch']})", mid_epoch=False)
            return self.metrics
        finally:
            for callback in self.callbacks:
                callback.on_close(self)

    def out_of_steps(self, step: Optional[int] = None) -> bool:
        """Whether ``train.max_steps`` steps are done (at ``step``, default the run's)."""
        done = self.counters["step"] + self.counters["epoch_step"] if step is None else step
        return bool(self.cfg.max_steps) and done >= self.cfg.max_steps

    def roll_back(self, error: NonFinite, last_good: Dict[str, Any], bar) -> None:
        """Restore the last completed epoch with a smaller learning rate, or give up."""
        cfg = self.cfg
        k = self.counters["rollbacks"] + 1  # the k-th rollback of the run runs at lr * factor^k
        if cfg.on_nan != "rollback" or k > cfg.max_rollbacks:
            raise TrainingError(str(error) + self.advice()) from None
        self.restore(copy.deepcopy(last_good))
        # the restored optimizer already carries the factors of the rollbacks before its epoch
        factor = cfg.rollback_lr_factor ** (k - self.counters["rollbacks"])
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
        self.schedule.scale(factor)
        self.counters["rollbacks"] = k
        bar.n = self.counters["epoch"] * self.steps_per_epoch + self.counters["epoch_step"]
        tqdm.write(f"pyrovae: {error}; rolled back to epoch {self.counters['epoch']}, learning rate now "
                   f"{self.optimizer.param_groups[0]['lr']:.3g} (rollback {k} of {cfg.max_rollbacks})",
                   file=sys.stderr)

    def epoch(self, epoch: int, bar) -> None:
        cfg, c, n, m = self.cfg, self.counters, self.n, self.m
        batches = epoch_plan(n, m, cfg.seed, epoch, self.data.labeled, cfg.labeled_per_batch, self.labeled_weight,
                             self.device, self.split_labels)
        # -sum_i objective_i and -sum_i ELBO_i so far: a half-done epoch's sums are over every rank's
        # shard (saved so), so rank 0 resumes with them and the others from 0
        carried = self.rank == 0
        total = torch.tensor(c["epoch_loss"] if carried else 0.0, device=self.device)
        total_elbo = torch.tensor(c["epoch_elbo"] if carried else 0.0, device=self.device)
        start = time.perf_counter() - c["epoch_seconds"]
        shard = slice(self.rank, None, self.world)
        # this rank's shard of each minibatch, read ahead (a streamed split: a DataLoader over the plan)
        points = self.data.train_split.plan([step.index[shard] for step in batches[c["epoch_step"]:]],
                                            self.data.num_workers)
        for i in range(c["epoch_step"], len(batches)):
            if self.out_of_steps(c["step"] + i):  # the step budget ends mid-epoch
                self.keep_partial_epoch(i, total, total_elbo, start)
                self.end_partial_epoch(epoch, batches[:i])
                return
            signal_number = self.poll()
            if signal_number:
                self.keep_partial_epoch(i, total, total_elbo, start)
                self.stop(signal_number, f"at epoch {epoch}, step {c['step'] + i}", mid_epoch=True)
            batch, noise = self.minibatch(batches[i].index, batches[i].weight, next(points), batches[i].labeled)
            self.beta = beta_at(cfg, c["step"] + i, self.steps_per_epoch)
            where = (epoch, c["step"] + i + 1, i + 1, len(batches))
            for update in range(self.algorithm.updates_per_batch):  # 1, but for mcem's M-steps
                try:
                    with self.precision.autocast():
                        step = self.algorithm.loss(batch, noise, self.beta, batches[i].size,
                                                   batches[i].index[self.rank::self.world], update)
                except NonFinite as e:
                    raise NonFinite(f"{e} {_where(*where)}") from None
                loss = step.loss
                self.optimizer.zero_grad(set_to_none=True)
                self.precision.backward(loss)
                self.precision.unscale(self.optimizer)
                # One sync per step: a non-finite loss or gradient is caught before it reaches the parameters
                # (under float16 a gradient that overflowed is the scaler's: the step is skipped, the scale shrinks).
                checks = torch.stack([loss.detach()] + ([] if self.precision.skips_overflow else
                                                        [p.grad.sum() for p in self.params if p.grad is not None]))
                if not bool(torch.isfinite(checks).all()):
                    what = "loss" if not torch.isfinite(loss).item() else "gradient"
                    raise NonFinite(f"non-finite {what} {_where(*where)}")
                self.precision.step(self.optimizer)
            self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate of the step just taken (the record's)
            self.schedule.after_step()
            total += step.objective_sum  # the minibatch's last update
            total_elbo += step.elbo_sum
            bar.update()
            if i % 20 == 0:
                bar.set_postfix(epoch=epoch, loss=f"{total.item() / (i * m + len(batch)):.2f}")
        seconds = time.perf_counter() - start
        total, total_elbo = self.summed(total, total_elbo)
        c.update(epoch=epoch, step=c["step"] + len(batches), samples_seen=c["samples_seen"] + n, epoch_step=0,
                 epoch_loss=0.0, epoch_elbo=0.0, epoch_seconds=0.0)
        per_point = -1 / self.weighted_n
        record = epoch_record(epoch=epoch, step=c["step"], samples_seen=c["samples_seen"],
                              train_elbo=total_elbo.item() * per_point, train_objective=total.item() * per_point,
                              beta=self.beta, train_seconds=seconds, images_per_second=n / seconds,
                              learning_rate=self.step_lr)
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs or self.out_of_steps():
            self.evaluate(record)
            if record["test_elbo"] is not None:  # None: a stop request cut the evaluation short
                bar.set_postfix(epoch=epoch, elbo=f"{record['train_elbo']:.2f}", test_elbo=f"{record['test_elbo']:.2f}")
        self.schedule.after_epoch(record)  # after the record took the epoch's rate; the checkpoint holds the next
        # the epoch's record replaces the record of its first part, where a step budget ended it before
        self.metrics = [r for r in self.metrics if r["epoch"] != epoch] + [record]
        for callback in self.callbacks:  # the run folder saves its checkpoint here, then the metrics line
            callback.on_epoch_end(self, record)
        signal_number = self.poll() if epoch < cfg.epochs and not self.out_of_steps() else None
        if signal_number:
            self.stop(signal_number, f"after epoch {epoch}", mid_epoch=False)

    def keep_partial_epoch(self, step: int, total, total_elbo, start: float) -> None:
        """A half-done epoch's counters (its next step and running sums, over every rank's shard)
        for a checkpoint to continue from."""
        total, total_elbo = self.summed(total, total_elbo)
        self.counters.update(epoch_step=step, epoch_loss=total.item(), epoch_elbo=total_elbo.item(),
                             epoch_seconds=time.perf_counter() - start)

    def summed(self, total: torch.Tensor, total_elbo: torch.Tensor):
        """The running sums of an epoch over every rank's shard (the process's own in one process)."""
        if self.world > 1:
            sums = torch.stack([total, total_elbo])
            dist.all_reduce(sums)
            total, total_elbo = sums[0], sums[1]
        return total, total_elbo

    def end_partial_epoch(self, epoch: int, done: List) -> None:
        """The step budget ran out after the steps ``done`` of ``epoch``: its record so far (the
        ELBO over the points those steps drew, ``step`` short of the epoch's end), evaluated, and
        the callbacks' ``on_epoch_end`` (the run folder's checkpoint holds the step reached, as at
        an interruption; a resumed run goes on from there and the epoch's whole record replaces this one)."""
        c = self.counters
        total, total_elbo = c["epoch_loss"], c["epoch_elbo"]
        seen = round(sum(step.size for step in done))
        per_point = -1 / max(self.weighted_n * seen / self.n, 1e-30)
        seconds = c["epoch_seconds"]
        record = epoch_record(epoch=epoch, step=c["step"] + len(done), samples_seen=c["samples_seen"] + seen,
                              train_elbo=total_elbo * per_point if seen else None,
                              train_objective=total * per_point if seen else None, beta=self.beta,
                              train_seconds=seconds, images_per_second=seen / seconds if seconds else None,
                              learning_rate=self.step_lr)
        self.evaluate(record)
        self.metrics = [r for r in self.metrics if r["epoch"] != epoch] + [record]
        for callback in self.callbacks:
            callback.on_epoch_end(self, record)

    def minibatch(self, index: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  points: Optional[torch.Tensor] = None, labeled: Optional[bool] = None):
        """This rank's shard of a global minibatch (a :class:`~pyrovae.Batch`, with its points'
        weights, if any), and the family's noise for it (torch engine; :meth:`~pyrovae.Model.noise_shape`).
        ``points``: the shard's points, already read (:meth:`~pyrovae.data.splits.Split.plan`);
        ``labeled``: the step's kind (:class:`~pyrovae.data.sampling.Step`): all labelled, all
        unlabelled (no labels), or None (each point as the label budget marks it).

        The noise is drawn for the whole global batch (every rank draws the same), then sharded
        like the points: rank r of K takes positions r, r + K, r + 2K, ... of the batch.
        """
        shard = slice(self.rank, None, self.world)
        uniform = None
        if self.data.binarize == "dynamic":
            uniform = torch.rand((index.numel(), *self.data.event_shape), generator=self.noise,
                                 device=self.device)[shard]
        batch = self.data.train_batch(index[shard], uniform, points)
        if labeled is not None:
            batch = as_labeled(batch, labeled)
        if weight is not None:
            batch.weight = weight[shard]
        noise = None
        shape = self.model.noise_shape(index.numel(), self.cfg.num_particles) if self.algorithm.draws_noise else None
        if shape is not None:  # (particles, global batch, ...): sharded along the batch
            noise = torch.randn(shape, generator=self.noise, device=self.device)[:, shard]
        return batch, noise

    def evaluate(self, record: Dict) -> None:
        """The epoch's test numbers, with the model in evaluation mode (a family's dropout off, its
        batch norms on their running statistics), as Lightning and scvi-tools evaluate. A stop
        request may cut it short (:class:`CutShort`, where ``stop_signal`` has ``cuttable``): the
        record then keeps no test numbers, and the loop saves the epoch and stops."""
        cuttable = hasattr(self.stop_signal, "cuttable")
        self.model.eval()
        try:
            if cuttable:
                self.stop_signal.cuttable = True
            self._evaluate(record)
        except CutShort:
            record.update({key: None for key in record if key.startswith(("test_", "validation_"))},
                          active_units=None)
        finally:
            if cuttable:
                self.stop_signal.cuttable = False
            self.model.train()

    def _evaluate(self, record: Dict) -> None:
        numbers, activity = held_out_numbers(self.model, self.data, self.cfg.eval_particles, self.cfg.seed)
        record.update(numbers)
        epoch, units = record["epoch"], int(activity.shape[0])
        if (2 * record["active_units"] < units and epoch > 1 and not self.warned and self.rank == 0
                and self.algorithm.trains_guide):
            self.warned = True
            warnings.warn(f"epoch {epoch}: only {record['active_units']} of {units} latent units are "
                          "active (Cov_x E_q[u] > 0.01); the rest have collapsed onto the prior. "
                          "Consider train.kl_warmup_epochs, a smaller latent_dim, or a weaker decoder",
                          PosteriorCollapseWarning, stacklevel=5)

    def advice(self) -> str:
        lr = self.optimizer.param_groups[0]["lr"]
        return (f"; likely causes: a learning rate too high (optim.lr = {lr:.3g}), a learned likelihood scale "
                "shrinking to 0 (raise min_scale), extreme data values; "
                f"{self.kept()}; train.on_nan = 'rollback' retries with a smaller learning rate")


def prepared_algorithm(model, data, cfg: TrainConfig, num_data: int, world: int = 1, split_labels: bool = False,
                       batch_size: int = 1):
    """``(estimator, algorithm)``: the step's algorithm for ``model`` on ``data`` as every trainer
    builds it (:class:`Trainer`, :class:`pyrovae.lightning.Module`): the data checked on the model in
    training mode (no state of it changed), ``model.prepare(data)`` (a resumed run's checkpoint
    restores the same state over it), the estimator resolved on two dry minibatches, and the
    algorithm built for N = ``num_data`` and dry-run on them."""
    model.train()
    with kept_buffers(model):
        check_run_data(model, data, batch_size, cfg.engine)
    model.prepare(data)
    with kept_buffers(model):
        dry = dry_training_batches(data, split_labels)
        estimator = resolve_estimator(cfg.estimator, model, dry, cfg.engine)
        algorithm = build_algorithm(model, cfg, estimator, num_data, world)
        algorithm.dry_run(dry)
    return estimator, algorithm


def beta_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """beta, reached linearly over ``kl_warmup_epochs`` epochs (Bowman et al. 2016; Sønderby et al. 2016)."""
    if cfg.kl_warmup_epochs == 0:
        return cfg.beta
    return cfg.beta * min(1.0, (step + 1) / (cfg.kl_warmup_epochs * steps_per_epoch))


def _out_of_memory(e: BaseException) -> bool:
    """Whether an exception is an allocation failure (torch's CPU allocator raises a RuntimeError)."""
    return isinstance(e, MemoryError) or isinstance(e, getattr(torch, "OutOfMemoryError", MemoryError)) \
        or "can't allocate memory" in str(e) or "out of memory" in str(e).lower()


