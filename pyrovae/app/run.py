"""Whole runs with their folders (:func:`train`): the data, the model and the loop of
:func:`pyrovae.fit`, with the run folder attached to the loop as callbacks.

- :class:`RunFolder`: after every epoch the checkpoint (with every epoch's metrics record and
  the data's fingerprint), then the metrics line; at an interrupted step a checkpoint there; on
  ``--resume`` the checkpoint restored (its data fingerprint checked) and ``metrics.jsonl``
  rebuilt from it; the figures at the end. Only rank 0 writes.
- :class:`TensorBoardLog`: scalars every epoch, image grids at evaluations; :class:`MLflowLog`:
  an MLflow run with the config, every metric and the figures (:mod:`pyrovae.app.tracking`).
- Signals: the first SIGINT or SIGTERM is noted and the loop stops at the next step (or after the
  epoch being evaluated) with a checkpoint; a second stops at once (:class:`StoppedAtOnce`).
"""

import contextlib
import dataclasses
import datetime
import io
import json
import math
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import pyro
import torch
import torch.distributed as dist

from pyrovae.app.checkpoint import counters_problem, read_checkpoint
from pyrovae.app.config import Config
from pyrovae.app.files import (
    CHECKPOINT,
    CONFIG,
    EVALUATION,
    EVALUATION_BEST,
    LOCK,
    METRICS,
    PLUGINS,
    RunLock,
    atomic_write_bytes,
    check_fresh,
    checked_output,
    copy_plugins,
    create_run_dir,
    read_metrics,
    remove_stale,
)
from pyrovae.app.fingerprint import data_fingerprint, fingerprint_difference
from pyrovae.app.opening import (
    build_run_model,
    check_one_config,
    checked_model_shapes,
    checkpoint_path,
    open_run,
    read_run_record,
)
from pyrovae.app.plugins import source_of as plugin_source
from pyrovae.app.run_record import run_difference
from pyrovae.app.runfolder import RunFolder
from pyrovae.app.tomlfile import dumps
from pyrovae.app.tracking import log_evaluation, opened_run_store, recorded_store
from pyrovae.data.sources import NO_DOWNLOAD
from pyrovae.devices import resolve_device
from pyrovae.errors import ConfigError, DataError, RunDirError, counted, shell_word
from pyrovae.infer.estimators import resolve_estimator
from pyrovae.infer.evaluate import evaluate, posterior_means
from pyrovae.rng import seeded
from pyrovae.training.callbacks import CALLBACKS
from pyrovae.training.checks import check_run_data
from pyrovae.training.distributed import distributed, on_rank0
from pyrovae.training.early_stopping import EarlyStopping, best_so_far
from pyrovae.training.loop import CutShort, fit
from pyrovae.training.memory import check_evaluation_memory, check_training_memory


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT or SIGTERM (or one outside the training loop): stop where we are.

    A ``KeyboardInterrupt``, so no ``except Exception`` swallows it; every file pyrovae writes
    is replaced atomically, so the last checkpoint stays whole."""

    def __init__(self, signal_number: int):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


def train(config: Optional[Config] = None, out_dir=None, resume: bool = False, model=None,
          callbacks: Sequence = ()) -> Path:
    """Run a whole config: load the data, build the model, train it, and fill a run folder.

    ``model``: a model built in Python (its own networks, say) to train instead of the one the
    config's ``[model]`` names; the run folder records its weights, and
    ``pyrovae.load(run, model=an_instance_like_it)`` loads them back. ``callbacks``: more
    :class:`~pyrovae.Callback` objects around the loop, after the run folder's and the config's
    (``pyrovae tune`` reports each evaluation to its trial this way).

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
        return _train(config, out_dir, resume, device, model, callbacks)


def _train(config: Config, out_dir, resume: bool, device: torch.device, model=None, extra: Sequence = ()) -> Path:
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
    data = load_run_data(config, device, "; or resume with --set data.download=true" if resume else "")
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
    check_run_data(model, data, config.train.batch_size, config.train.engine)
    resolve_estimator(config.train.estimator, model, data.test_head(2))
    if rank == 0 and config.train.progress and getattr(type(model), "vectorizable", True) is None:
        print(particles_line(model), file=sys.stderr)  # what the dry run showed, for a family that did not say

    specs = config.log.callback_specs()  # every callback the config names is registered (its plugin named)
    if dist.is_initialized():
        dist.barrier()  # every rank has checked its input before rank 0 creates anything
    lock = RunLock(".", "write")
    try:
        made = not resume and (out_dir is None or not Path(out_dir).exists())
        out_dir = on_rank0(lambda: _claim_run_dir(config, out_dir, resume, lock), rank)
        folder = RunFolder(out_dir, config, resume)
        callbacks = [folder] + [CALLBACKS.build(spec, "log.callbacks", run_dir=out_dir, config=config)
                                for spec in specs] + list(extra)
        try:
            with _stop_on_signals(at_once=lambda: folder.nothing_to_save) as stop_signal:
                fit(model, data, dataclasses.replace(config.train, device=str(device)), config.optim, callbacks,
                    stop_signal)
        except BaseException:
            if not resume and folder.saved_epoch is None and rank == 0:  # nothing worth keeping: nothing blocks --out
                _unmake(out_dir, remove_folder=made, everything=True)
            raise
    finally:
        lock.release()
    return out_dir


def particles_line(model) -> str:
    """One line on how a family that did not declare :attr:`~pyrovae.Model.vectorizable` runs L > 1 particles."""
    name = type(model).__name__
    if model.particles_vectorized:
        return (f"pyrovae: model ({name}): L > 1 particles run in one vectorized pass (a particle plate left of "
                "its plates); one particle, the default, runs on the batch's own shapes")
    return (f"pyrovae: model ({name}): L > 1 particles run one after another: a particle plate fails it "
            f"({model.particles_note}); declare vectorizable = False to skip the check, or True once it broadcasts")


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


def _unmake(out_dir: Path, remove_folder: bool, everything: bool = False) -> None:
    """Remove what setting up a new run folder wrote (and the folder, if this run made it);
    ``everything``: also what a run that failed before its first checkpoint wrote."""
    for name in (CONFIG, LOCK) + ((METRICS,) if everything else ()):
        (out_dir / name).unlink(missing_ok=True)
    for name in (PLUGINS,) + (("tensorboard",) if everything else ()):
        shutil.rmtree(out_dir / name, ignore_errors=True)
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


class StopRequests:
    """SIGINT and SIGTERM as the training loop sees them: calling it gives the first signal received
    (or None), which the loop polls at every step to save a checkpoint there and stop cleanly.
    A second signal, or one when ``at_once()`` (no work would be lost: before the first step,
    after the last checkpoint), stops at once (:class:`StoppedAtOnce`); one during the epoch's
    evaluation (``cuttable``, set by the loop) cuts it short (:class:`~pyrovae.training.loop.CutShort`):
    the epoch is saved without its test numbers. So a run stops within a step of a signal."""

    def __init__(self, at_once: Callable[[], bool] = lambda: False):
        self.received: List[int] = []
        self.at_once, self.cuttable = at_once, False

    def __call__(self) -> Optional[int]:
        return self.received[0] if self.received else None

    def handler(self, number, frame) -> None:
        first = not self.received
        self.received.append(number)
        if not first or self.at_once():
            raise StoppedAtOnce(number)
        if self.cuttable:
            raise CutShort(number)


@contextlib.contextmanager
def _stop_on_signals(at_once: Callable[[], bool] = lambda: False):
    """The loop's :class:`StopRequests`, handling SIGINT and SIGTERM while it runs."""
    requests = StopRequests(at_once)
    with _handling_signals(requests.handler):
        yield requests


def _stop_at_once(number, frame):
    raise StoppedAtOnce(number)


def stop_at_once_on_signals():
    """SIGINT and SIGTERM raise :class:`StoppedAtOnce` where the program is (``evaluate``,
    ``sample``: nothing to save), so the process exits with 128 + the signal number."""
    return _handling_signals(_stop_at_once)


def load_run_data(config: Config, device="cpu", hint: str = ""):
    """The data of a run's config. A run's own record never downloads (its ``data.path`` is a
    destination the folder names: :func:`pyrovae.app.run_record.without_destinations`), and data it
    cannot find say so, with ``hint``."""
    try:
        return config.load_data(device)
    except DataError as e:
        if NO_DOWNLOAD not in str(e):
            raise
        raise DataError(f"{e}; opening a run never downloads into the place its folder names: download the data "
                        f"there yourself{hint}") from None


def open_run_with_data(run_dir, plugins: Sequence[str], command: str, device, which: str = "last"):
    """A run folder opened (:func:`~pyrovae.app.opening.open_run`: nothing in it runs) with its
    model in eval mode on ``device``, and the run's data, checked to be those it was trained on
    (their fingerprint against the checkpoint's): ``(opened, data)``."""
    opened = open_run(run_dir, plugins, command, device, which=which)
    opened.model = opened.model.to(device).eval()
    data = load_run_data(opened.config)
    differs = fingerprint_difference(opened.state["data"], data_fingerprint(data))
    if differs:
        raise RunDirError(f"{checkpoint_path(run_dir, which)}: the data differ from the data it was trained on: "
                          f"{differs}; use the run's own data")
    return opened, data


def evaluate_run(run_dir, nll_samples: int = 5000, iwae_samples: int = 50, elbo_particles: int = 10,
                 device: str = "cpu", out=None, report: Optional[Callable[[Dict], None]] = None,
                 plugins: Sequence[str] = (), which: str = "last", progress: bool = False,
                 mlflow: Union[bool, str, None] = None) -> Dict:
    """Score a finished run on its test split and write ``evaluation.json`` (``which="best"``: the
    best epoch's checkpoint, ``best.pt``, into ``evaluation_best.json``).

    ``mlflow`` (``--mlflow [URI]``): also log the evaluation to MLflow, True for the user's
    ``MLFLOW_TRACKING_URI`` or else ``mlflow.db`` beside the run folder, a string for that store;
    None: only where the user's ``MLFLOW_TRACKING_URI`` is the store the run was tracked in. What
    the folder records (``config.toml``'s ``[log]``, ``mlflow.json``) never picks a store
    (:func:`pyrovae.app.tracking.opened_run_store`).

    ``plugins``: the plugin files or modules a run trained with them needs (checked against the
    SHA-256 the run recorded, then run from the bytes that were hashed; nothing the run folder
    names is ever run). ``out`` is where the JSON goes (default ``RUN_DIR/evaluation.json``; never
    one of the run's own files); it is checked to be writable before any work, and writing into
    the run folder takes its lock (one writer per run folder). The data must be those the run
    was trained on: their fingerprint (shapes and SHA-256 of the values) is compared with the
    checkpoint's. ``report(result)``, if given, is called before the file is written (the CLI
    prints the numbers there), so a failed write never loses them. The file is strict JSON: a
    non-finite result is refused in one line, and nothing is written. ``progress``: a bar with
    an ETA for each estimate, on a terminal. The result names the checkpoint (``checkpoint``:
    last or best) and its ``epoch``.
    """
    run_dir = Path(run_dir)
    device = resolve_device(str(device), "--device")
    checkpoint_path(run_dir, which, "--which")  # a bad choice is refused before anything else
    out = Path(out) if out is not None else run_dir / (EVALUATION if which == "last" else EVALUATION_BEST)
    checked_output(out, run_dir, ".json", EVALUATION, required=False)
    into_run = out.parent.resolve() == run_dir.resolve()
    which_flag = "" if which == "last" else f" --which {which}"
    opened, data = open_run_with_data(run_dir, plugins, f"pyrovae evaluate RUN_DIR{which_flag} {{plugins}}", device,
                                      which)
    config, model = opened.config, opened.model
    check_evaluation_memory(model, elbo_particles, device)
    with contextlib.ExitStack() as stack:
        if into_run:
            stack.enter_context(RunLock(run_dir, "evaluate"))
            remove_stale(run_dir)
        result = evaluate(model, data.test_split.to(device), nll_samples, iwae_samples, elbo_particles,
                          seed=config.train.seed, progress=progress)
        result = {**result, "checkpoint": which, "epoch": opened.state["counters"]["epoch"]}
        bad = non_finite(result)
        if bad:
            raise RunDirError(f"{run_dir}: the evaluation gave {bad}: the model or the data give non-finite "
                              "scores, and evaluation.json holds finite numbers only; nothing was written")
        if report is not None:
            report(result)
        text = (json.dumps(result, indent=2, allow_nan=False) + "\n").encode()
        atomic_write_bytes(out, lambda f: f.write(text), "; the numbers above are the result")
    store = opened_run_store(run_dir, mlflow, recorded_store(run_dir))
    if store is not None:  # the run's MLflow run there gains evaluation.json and its numbers
        log_evaluation(run_dir, store, out, result, int(opened.state["counters"]["step"]),
                       config.log.experiment or config.data.name)
    return result


def encode_run(run_dir, out, split: str = "test", plugins: Sequence[str] = (), which: str = "last",
               device: str = "cpu") -> Dict[str, tuple]:
    """Write the posterior means E_q[z | x] of a run's ``split`` (``test``, ``train``, or
    ``validation`` where the run has one) to ``out``, a ``.npz`` file: ``latents`` ``(N, latent
    size)`` float32, in the split's order, and ``labels`` ``(N,)`` where the data have them (scvi-tools'
    ``get_latent_representation``). The run is opened as by ``evaluate`` (nothing in it runs; the data
    must be those it trained on); ``out`` is checked to be writable before any work and written
    atomically. Returns the shapes written."""
    run_dir, out = Path(run_dir), Path(out)
    device = resolve_device(str(device), "--device")
    checkpoint_path(run_dir, which, "--which")
    checked_output(out, run_dir, ".npz")
    which_flag = "" if which == "last" else f" --which {which}"
    opened, data = open_run_with_data(run_dir, plugins,
                                      f"pyrovae encode RUN_DIR{which_flag} {{plugins}} --out {out}", device, which)
    if split not in data.splits:
        raise RunDirError(f"--split {split}: valid for this run: {', '.join(data.splits)}")
    points = data.splits[split].to(device)
    with seeded(points, opened.config.train.seed):  # a family's encode may sample: from a fixed seed
        arrays = {"latents": posterior_means(opened.model, points).float().cpu().numpy()}
    if points.labels is not None:
        arrays["labels"] = points.labels.cpu().numpy()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(out, lambda f: f.write(buffer.getbuffer()))
    return {k: tuple(v.shape) for k, v in arrays.items()}


def summary_line(run_dir, command: str = "pyrovae") -> str:
    """One line on a finished run, from its own files (``metrics.jsonl``, ``config.toml``: read as
    data): epochs, steps, the last test ELBO (and accuracy), how it stopped, the folder, and the
    ``evaluate`` command to run next (``command``: how the CLI is invoked)."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    config = read_run_record(run_dir)
    last = records[-1] if records else {}
    tested = [r for r in records if r.get("test_elbo") is not None]
    parts = [f"trained {counted(last.get('epoch', 0), 'epoch')}, {counted(last.get('step', 0), 'step')}"]
    if tested:
        score = f"test ELBO {tested[-1]['test_elbo']:.2f} nats"
        if tested[-1].get("test_accuracy") is not None:
            score += f", test accuracy {tested[-1]['test_accuracy']:.3f}"
        parts.append(score)
    stopping = config.get("train", {}).get("early_stopping")
    which = ""
    if isinstance(stopping, dict):
        rule = EarlyStopping.from_spec(stopping)
        best = best_so_far(records, rule.metric, rule.min_delta)
        if best is not None and best.since >= rule.patience:
            parts.append(f"stopped early: best {rule.metric} {best.value:.2f} at epoch {best.epoch} (best.pt)")
            which = " --which best"
    plugins = config.get("plugins", {}).get("files", [])
    flags = "".join(f" --plugins {shell_word(f)}" for f in plugins) if isinstance(plugins, list) else ""
    parts.append(f"run folder: {run_dir}")
    parts.append(f"next: {command} evaluate {shell_word(run_dir)}{which}{flags}")
    return "pyrovae: " + "; ".join(parts)


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


