"""Whole runs with their folders (:func:`train`): the data, the model and the loop of
:func:`pyrovae.fit`, with the run folder attached to the loop as callbacks.

- :class:`RunFolder`: after every epoch the checkpoint (with every epoch's metrics record and
  the data's fingerprint), then the metrics line; at an interrupted step a checkpoint there; on
  ``--resume`` the checkpoint restored (its data fingerprint checked) and ``metrics.jsonl``
  rebuilt from it; the figures at the end. Only rank 0 writes.
- :class:`TensorBoardLog`: scalars every epoch, image grids at evaluations.
- Signals: the first SIGINT or SIGTERM is noted and the loop stops at the next step (or after the
  epoch being evaluated) with a checkpoint; a second stops at once (:class:`StoppedAtOnce`).
"""

import contextlib
import dataclasses
import datetime
import shutil
import signal
import threading
from pathlib import Path
from typing import Dict, List, Optional

import pyro
import torch
import torch.distributed as dist

from .checkpoint import (
    build_run_model,
    check_one_config,
    checked_model_shapes,
    counters_problem,
    data_fingerprint,
    fingerprint_difference,
    read_checkpoint,
    read_run_record,
    save_checkpoint,
)
from .config import Config, dumps, run_difference
from .distributed import distributed, on_rank0
from .errors import ConfigError, RunDirError, one_line
from .estimators import resolve_estimator
from .evaluate import seeded
from .loop import (  # noqa: F401 (the loop's names, re-exported for pyrovae.train users)
    Callback,
    Interrupted,
    PosteriorCollapseWarning,
    Trainer,
    TrainingError,
    check_data,
    fit,
    kl_weight,
)
from .memory import check_training_memory
from .plugins import source_of as plugin_source
from .runfolder import (
    CHECKPOINT,
    CONFIG,
    LOCK,
    PLUGINS,
    RunLock,
    append_metrics,
    atomic_write_bytes,
    check_fresh,
    copy_plugins,
    create_run_dir,
    remove_stale,
    write_metrics,
)


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT or SIGTERM (or one outside the training loop): stop where we are.

    A ``KeyboardInterrupt``, so no ``except Exception`` swallows it; every file pyrovae writes
    is replaced atomically, so the last checkpoint stays whole."""

    def __init__(self, signal_number: int):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


class RunFolder(Callback):
    """The run folder around the loop (see the module docstring). ``config`` is the resolved run
    config the checkpoint records; ``resume`` continues from the folder's checkpoint (or from the
    start, when it has none yet)."""

    def __init__(self, run_dir, config: Config, resume: bool = False):
        self.run_dir, self.config, self.resume = Path(run_dir), config, resume
        self.saved_epoch: Optional[int] = None
        self.writes = True
        self.fingerprint = None

    def on_start(self, trainer) -> None:
        self.writes = trainer.rank == 0
        #: the data's shapes and hash, recorded in every checkpoint; --resume and evaluate compare them
        self.fingerprint = data_fingerprint(trainer.data)
        checkpoint = self.run_dir / CHECKPOINT
        if self.resume and checkpoint.exists():
            state = read_checkpoint(checkpoint)
            differs = fingerprint_difference(state["data"], self.fingerprint)
            if differs:
                raise RunDirError(f"{checkpoint}: the data differ from the data it was trained on: {differs}; "
                                  "resume with the same data, or start a new run")
            try:
                trainer.restore(state, checkpoint)
            except (RuntimeError, ValueError, TypeError, KeyError, IndexError, OverflowError) as e:  # e.g. RNG states
                raise RunDirError(f"{checkpoint}: malformed checkpoint: its training state does not fit the run "
                                  f"({type(e).__name__}: {one_line(str(e), 120)})") from None
            trainer.metrics = [dict(r) for r in state["metrics"]]
            self.saved_epoch = trainer.counters["epoch"]
        if self.resume and self.writes:
            # metrics.jsonl may lack the checkpoint's last epoch, or hold epochs past it or a torn
            # line (a kill, a full disk): the checkpoint's records replace it, atomically.
            write_metrics(self.run_dir, trainer.metrics)

    def failure_note(self) -> str:
        return f"; {self.kept()}" if self.saved_epoch is not None else "; no checkpoint was written yet"

    def save(self, trainer) -> None:
        """Write the checkpoint (with the metrics records so far)."""
        if self.writes:
            save_checkpoint(self.run_dir / CHECKPOINT, trainer.state(), trainer.model.event_shape, self.config,
                            self.fingerprint, trainer.metrics, self.failure_note(), trainer.data.num_classes)
            self.saved_epoch = trainer.counters["epoch"]

    def on_epoch_end(self, trainer, record: Dict) -> None:
        # The checkpoint (which holds the records) first, then the metrics line: after a kill
        # or a write failure between the two, --resume rebuilds metrics.jsonl from the checkpoint.
        self.save(trainer)
        if self.writes:
            append_metrics(self.run_dir, record, self.failure_note())

    def on_interrupt(self, trainer, mid_epoch: bool) -> Optional[str]:
        if mid_epoch:
            self.save(trainer)
            return f"checkpoint saved: resume with pyrovae train --out {self.run_dir} --resume"
        return (f"checkpoint of epoch {trainer.counters['epoch']} saved: resume with "
                f"pyrovae train --out {self.run_dir} --resume")

    def on_end(self, trainer) -> None:
        if not self.writes:
            return
        from .plots import plot_run  # the figures' module sets matplotlib's backend: only when plotting

        try:
            plot_run(self.run_dir, trainer.model, trainer.data.test_batch, trainer.metrics)
        except RunDirError as e:
            raise RunDirError(f"{e}; training finished: the checkpoint of epoch {trainer.counters['epoch']} "
                              "is complete") from None

    def kept(self) -> Optional[str]:
        if self.saved_epoch is None:
            return None
        return f"the last good checkpoint (epoch {self.saved_epoch}) is kept in {self.run_dir}"


class TensorBoardLog(Callback):
    """TensorBoard event files in ``log_dir`` (rank 0): every epoch the ELBO, its reconstruction
    and KL terms, the KL weight, the learning rate, images per second and active units; at every
    evaluation grids of samples and reconstructions, drawn without touching the training RNG."""

    def __init__(self, log_dir):
        self.log_dir, self.writer = Path(log_dir), None

    def on_start(self, trainer) -> None:
        if trainer.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir))

    def on_epoch_end(self, trainer, record: Dict) -> None:
        """Scalars every epoch, image grids at evaluations (drawn without touching the training RNG)."""
        from .plots import as_images, image_grid

        if self.writer is None:
            return
        tb, epoch = self.writer, record["epoch"]
        for tag, key in (("train/elbo", "train_elbo"), ("train/objective", "train_objective"),
                         ("train/kl_weight", "kl_weight"), ("train/images_per_second", "images_per_second"),
                         ("test/elbo", "test_elbo"), ("test/reconstruction", "test_reconstruction"),
                         ("test/kl", "test_kl"), ("test/active_units", "active_units")):
            if record[key] is not None:
                tb.add_scalar(tag, record[key], epoch)
        tb.add_scalar("train/learning_rate", trainer.optimizer.param_groups[0]["lr"], epoch)
        if record["test_elbo"] is not None:
            with torch.no_grad(), seeded(trainer.data.test, trainer.cfg.seed):
                x = trainer.data.test_batch[:32]
                grids = {"samples": trainer.model.sample(64),
                         "reconstructions": torch.cat([x.x, trainer.model.reconstruct(x)])}
            for tag, images in grids.items():
                grid = image_grid(as_images(images, trainer.model.event_shape), 8 if tag == "samples" else 16)
                tb.add_image(tag, grid.clip(0, 1), epoch, dataformats="HWC" if grid.ndim == 3 else "HW")
        tb.flush()

    def on_close(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()


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
    with distributed(config.train.device) as device:
        return _train(config, out_dir, resume, device, model)


def _train(config: Config, out_dir, resume: bool, device: torch.device, model=None) -> Path:
    rank = dist.get_rank() if dist.is_initialized() else 0
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    if resume:
        if out_dir is None:
            raise RunDirError("--resume needs the run folder (--out RUN_DIR)")
        out_dir = Path(out_dir)
        # the run's record of its config: config.toml, with the checkpoint's copy checked against it
        recorded = read_run_record(out_dir)
        checkpoint = out_dir / CHECKPOINT
        state = read_checkpoint(checkpoint) if checkpoint.exists() else None
        if state is not None:
            check_one_config(out_dir, recorded, state)
        saved = state["config"] if state is not None else recorded
    elif out_dir is not None:
        check_fresh(out_dir)
    data = config.data.load(device)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, binarize=data.binarize))
    if resume:
        differs = run_difference(saved, config.to_dict(), plugins=True)
        if differs:
            raise RunDirError(f"{out_dir}: the run was made with another {differs}; "
                              "resume with the run's own config (omit CONFIG) or start a new run")
        problem = counters_problem(state, config) if state is not None else None
        if problem:
            raise RunDirError(f"{out_dir / CHECKPOINT}: malformed checkpoint: {problem}")
    # Sizes that cannot be allocated are refused now, from a model built on the meta device.
    t = config.train
    shapes = model if model is not None else checked_model_shapes(config, data.event_shape, data.num_classes, device)
    if shapes is not None:
        labels = (f"; {data.num_classes} classes from the data's labels (classes are 0, 1, ..., the largest label)"
                  if getattr(shapes, "num_classes", None) else "")
        try:
            check_training_memory(shapes, t.batch_size, t.num_particles, t.eval_particles,
                                  str(config.optim.get("name")), device)
        except ConfigError as e:
            raise ConfigError(f"{e}{labels}") from None
    pyro.set_rng_seed(config.train.seed)
    if model is None:
        model = build_run_model(config, data.event_shape, data.num_classes, device)
    check_data(model, data, config.train.batch_size)
    resolve_estimator(config.train.estimator, model, data.test_batch[:2])

    if dist.is_initialized():
        dist.barrier()  # every rank has checked its input before rank 0 creates anything
    lock = RunLock(".", "write")
    try:
        out_dir = on_rank0(lambda: _claim_run_dir(config, out_dir, resume, lock), rank)
        callbacks = [RunFolder(out_dir, config, resume)]
        if config.log.tensorboard:
            callbacks.append(TensorBoardLog(out_dir / "tensorboard"))
        with _stop_on_signals() as stop_signal:
            fit(model, data, dataclasses.replace(config.train, device=str(device)), config.optim, callbacks,
                stop_signal)
    finally:
        lock.release()
    return out_dir


def _claim_run_dir(config: Config, out_dir, resume: bool, lock: RunLock) -> Path:
    """Create (or, resuming, open) the run folder, take its lock for the whole run, remove what
    a killed writer left, and write the resolved config (on resume too: the run's config is
    ``config.toml``, with the new ``train.epochs`` and the like).

    A new folder that cannot be set up (a full disk while the plugins are copied, say) is removed
    again, so nothing half-made blocks ``--out``."""
    existed = out_dir is not None and Path(out_dir).exists()
    if resume:
        out_dir = Path(out_dir)
    else:
        default = f"runs/{config.data.name}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        out_dir = create_run_dir(out_dir, default=default)
    lock.run_dir = out_dir
    lock.acquire()
    try:
        if not resume:
            check_fresh(out_dir)  # another run may have got in between our mkdir and our lock
        remove_stale(out_dir)
        tensorboard = out_dir / "tensorboard"
        if tensorboard.is_symlink():
            raise RunDirError(f"{tensorboard}: is a symbolic link; a run folder writes only inside itself")
        if not resume:  # the copies first: config.toml, written last, makes the folder a run
            copy_plugins(_plugin_copies(config), out_dir)
        text = dumps(config.to_dict()).encode()
        atomic_write_bytes(out_dir / CONFIG, lambda f: f.write(text))
    except BaseException:
        if not resume:
            _unmake(out_dir, remove_folder=not existed)
        lock.release()
        raise
    return out_dir


def _plugin_copies(config: Config):
    """(file name, bytes that ran) for each of the run's plugins this process ran."""
    out = []
    for file, digest in zip(config.plugins.files, config.plugins.sha256):
        source = plugin_source(file, digest)
        if source is not None:
            out.append((Path(file).name, source))
    return out


def _unmake(out_dir: Path, remove_folder: bool) -> None:
    """Remove what setting up a new run folder wrote (and the folder, if this run made it)."""
    for name in (CONFIG, LOCK):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / PLUGINS, ignore_errors=True)
    remove_stale(out_dir)
    if remove_folder:
        try:
            out_dir.rmdir()
        except OSError:
            pass


@contextlib.contextmanager
def _handling_signals(handler):
    """``handler`` for SIGINT and SIGTERM while the block runs (the main thread only: Python
    delivers signals there), the previous handlers restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _stop_on_signals():
    """Turn SIGINT and SIGTERM into a flag that the loop polls, so it can save a checkpoint
    at the current step (or the end of the epoch being evaluated) and stop cleanly; a second
    signal stops at once (:class:`StoppedAtOnce`)."""
    received: List[int] = []

    def handler(number, frame):
        if received:
            raise StoppedAtOnce(number)
        received.append(number)

    with _handling_signals(handler):
        yield lambda: received[0] if received else None


def _stop_at_once(number, frame):
    raise StoppedAtOnce(number)


def stop_at_once_on_signals():
    """SIGINT and SIGTERM raise :class:`StoppedAtOnce` where the program is (``evaluate``,
    ``sample``: nothing to save), so the process exits with 128 + the signal number."""
    return _handling_signals(_stop_at_once)
