"""Experiment trackers beside the run folder, as callbacks of the loop (rank 0 alone writes):

- :class:`TensorBoardLog` (``log.tensorboard``): event files in ``RUN_DIR/tensorboard``.
- :class:`MLflowLog` (``log.mlflow``): one MLflow run per pyrovae run, continued by ``--resume``:
  the resolved config flattened as params, every ``metrics.jsonl`` key as a metric at its
  step, ``config.toml`` and the figures as artifacts, and :func:`log_evaluation` adds
  ``evaluation.json``. The MLflow run's id is kept in ``RUN_DIR/mlflow.json``.

**Destinations come from the user, never from a run folder.** A fresh run's config is the
user's program and names its store (``log.mlflow_uri``). A command that opens an existing run
(``evaluate``, ``train --resume`` of the run's own config) takes its store only from its own
command line (``--mlflow [URI]``) or the user's environment (``MLFLOW_TRACKING_URI``), never from
the folder's ``config.toml`` or ``mlflow.json``, whoever wrote them (:func:`opened_run_store`);
what the folder records is shown in one line (:func:`tracking_notice`), never followed. The
MLflow run a folder continues is the one in the user's store that is tagged with this folder's
path (``pyrovae.run_dir``): the folder's ``mlflow.json`` is a hint that is checked against that
tag, so a foreign record cannot make pyrovae log into another MLflow run either. Credentials
that MLflow reads from the environment (``MLFLOW_TRACKING_TOKEN``, ...) thus only ever go to a
store the user named.

Every MLflow failure (an unreachable server, a full disk under the store) is one
:class:`~pyrovae.errors.TrackingError` line that names the store, what failed and what was kept.

Both import their package only when a run asks for them (``pyrovae[tensorboard]``,
``pyrovae[mlflow]``).
"""

import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from pyrovae.app.files import CONFIG, FIGURES, MLFLOW, atomic_write_bytes
from pyrovae.errors import RunDirError, TrackingError, as_typed, one_line, shell_word, shown
from pyrovae.models.base import NeedsInput
from pyrovae.rng import seeded
from pyrovae.training.callbacks import CALLBACKS, Callback

#: MLflow's limit on a param's value (characters); a longer value is cut in the middle
MLFLOW_PARAM_CHARS = 6000


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
        from pyrovae.app.plots import as_images, image_grid

        if self.writer is None:
            return
        tb, epoch = self.writer, record["epoch"]
        for tag, key in (("train/elbo", "train_elbo"), ("train/objective", "train_objective"),
                         ("train/beta", "beta"), ("train/images_per_second", "images_per_second"),
                         ("test/elbo", "test_elbo"), ("test/reconstruction", "test_reconstruction"),
                         ("test/kl", "test_kl"), ("test/active_units", "active_units")):
            if record[key] is not None:
                tb.add_scalar(tag, record[key], epoch)
        tb.add_scalar("train/learning_rate", trainer.optimizer.param_groups[0]["lr"], epoch)
        if record["test_elbo"] is not None:
            with torch.no_grad(), seeded(trainer.data.test_split, trainer.cfg.seed):
                x = trainer.data.test_head(32)
                try:
                    samples = trainer.model.sample(64)
                except NeedsInput:  # a model that conditions on an input: samples given the test points
                    samples = trainer.model.sample(len(x), batch=x)
                grids = {"samples": samples, "reconstructions": torch.cat([x.x, trainer.model.reconstruct(x)])}
            standardization = getattr(trainer.data, "standardization", None)
            if standardization is not None:  # in the data's units
                grids = {tag: standardization.undo(images) for tag, images in grids.items()}
            for tag, images in grids.items():
                grid = image_grid(as_images(images, trainer.model.event_shape), 8 if tag == "samples" else 16)
                tb.add_image(tag, grid.clip(0, 1), epoch, dataformats="HWC" if grid.ndim == 3 else "HW")
        tb.flush()

    def on_close(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()


#: the user's environment's tracking store (MLflow's own variable)
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"


#: the default store's file, beside the run folders (MLflow's recommended local store: a SQLite database)
DEFAULT_STORE = "mlflow.db"


def default_store(run_dir) -> str:
    """The default tracking URI: a SQLite database beside the run folder (``runs/mlflow.db`` for
    ``runs/digits-...``). MLflow 3 keeps file stores in maintenance mode and opens one only when
    ``MLFLOW_ALLOW_FILE_STORE`` is set, so a database is what any user's own ``MlflowClient`` opens."""
    return f"sqlite:///{Path(run_dir).resolve().parent / DEFAULT_STORE}"


def mlflow_tracking_uri(run_dir, uri: str = "") -> str:
    """The tracking URI of ``log.mlflow_uri`` (or ``--mlflow URI``): as given, or (``""``, the
    default) the user's ``MLFLOW_TRACKING_URI`` where it is set, else :func:`default_store`, the
    database ``mlflow.db`` beside the run folder. A path without a scheme is a file store
    (a folder, as MLflow's ``mlruns``)."""
    if not uri:
        uri = os.environ.get(TRACKING_URI_VARIABLE, "")
    if not uri:
        return default_store(run_dir)
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return Path(uri).resolve().as_uri()
    return uri


#: MLflow's HTTP retry settings where the user's environment sets none: an unreachable server is one
#: line within seconds (MLflow's own defaults retry each request for about two minutes)
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def mlflow_client(uri: str):
    """An ``MlflowClient`` for ``uri``. MLflow 3 refuses a file store unless ``MLFLOW_ALLOW_FILE_STORE``
    is set: a run that names one has chosen it, so it is allowed for such URIs. HTTP requests retry
    as :data:`HTTP_DEFAULTS` says, unless the environment says otherwise. Creating a database's
    tables logs nothing (MLflow and Alembic would say so at INFO)."""
    from mlflow.tracking import MlflowClient

    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=uri)


def flat_params(tree: Dict, prefix: str = "") -> Dict[str, str]:
    """A nested config dict as MLflow params: ``{"model": {"latent_dim": 2}}`` -> ``{"model.latent_dim": "2"}``;
    lists and other leaves as JSON (strings as they are), cut to MLflow's limit."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[name] = one_line(text, MLFLOW_PARAM_CHARS)
    return out


def record_metrics(record: Dict) -> Dict[str, float]:
    """The finite numbers of a metrics record (None, strings, booleans and non-finite values left out)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def read_mlflow_record(run_dir) -> Optional[Dict]:
    """``RUN_DIR/mlflow.json`` (``tracking_uri``, ``experiment_id``, ``run_id``), or None if absent.
    What it says is a record to show and a hint to check, never a destination."""
    path = Path(run_dir) / MLFLOW
    if not path.exists():
        return None
    try:
        if not path.is_file() or path.stat().st_size > 1 << 16:
            raise RunDirError(f"{path}: not a small regular file")
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunDirError(f"{path}: cannot read ({type(e).__name__}: {one_line(str(e), 100)})") from None
    if not (isinstance(record, dict) and all(isinstance(record.get(k), str) for k in ("tracking_uri", "run_id"))):
        raise RunDirError(f"{path}: malformed: expected a JSON object with tracking_uri and run_id strings")
    return record


def _readable_record(run_dir) -> Optional[Dict]:
    """The folder's ``mlflow.json`` as a record to show and a hint to check: None where it is absent
    or unreadable (a run that logs rewrites it)."""
    try:
        return read_mlflow_record(run_dir)
    except RunDirError:
        return None


def recorded_store(run_dir, recorded_log: Optional[Dict] = None) -> Optional[str]:
    """The MLflow store a run folder says it was tracked in: its ``mlflow.json``'s, else its
    config's ``[log]`` (``recorded_log``, where ``mlflow`` is true); None if it names none. Shown to
    the user, never connected to."""
    record = _readable_record(run_dir)
    if record is not None:
        return record["tracking_uri"]
    log = recorded_log if isinstance(recorded_log, dict) else {}
    if log.get("mlflow") is True:
        uri = log.get("mlflow_uri", "")
        return uri if isinstance(uri, str) and uri else default_store(run_dir)
    return None


def opened_run_store(run_dir, mlflow=None, recorded: Optional[str] = None) -> Optional[str]:
    """Where a command that opens an existing run (``evaluate``, ``train --resume``) logs to MLflow,
    from the user alone: ``mlflow`` is ``--mlflow [URI]`` (True or ``""``: ``MLFLOW_TRACKING_URI``,
    else ``mlflow.db`` beside the run folder; a string: that URI); without it, the user's
    ``MLFLOW_TRACKING_URI`` where the run was tracked there (``recorded``, the folder's own record,
    is compared with it, never used). None: the command logs nowhere."""
    if mlflow is True or mlflow == "":
        return mlflow_tracking_uri(run_dir, "")
    if isinstance(mlflow, str):
        return mlflow_tracking_uri(run_dir, mlflow)
    env = os.environ.get(TRACKING_URI_VARIABLE, "")
    if env and recorded is not None and mlflow_tracking_uri(run_dir, env) == recorded:
        return mlflow_tracking_uri(run_dir, env)
    return None


def tracking_notice(run_dir, recorded: Optional[str], chosen: Optional[str], command: str) -> Optional[str]:
    """One line for a run folder that records an MLflow store the user did not name: where it was
    tracked (not followed) and how to continue there (``command``, the user's, gains ``--mlflow``)."""
    if recorded is None or chosen is not None:
        return None
    flag = "--mlflow" if recorded == mlflow_tracking_uri(run_dir, "") else f"--mlflow {shell_word(recorded)}"
    return (f"pyrovae: this run was tracked in MLflow at {shown(recorded, 200)}, as its folder records; a run folder "
            f"names no destination, so nothing is logged there unless you name it: {as_typed(command)} {flag}")


def tracking_failed(uri: str, what: str, error: BaseException) -> TrackingError:
    """The one line of a tracking failure: the store, what failed and why (the caller adds what was kept)."""
    return TrackingError(f"MLflow at {shown(uri, 160)}: {what} failed ({type(error).__name__}: "
                         f"{one_line(str(error), 200)})")


#: the folder beside a SQLite store's database where its new experiments keep their artifacts
ARTIFACTS = "mlartifacts"


def artifact_location(uri: str) -> Optional[str]:
    """Where a new experiment in the store at ``uri`` keeps its artifacts: for a SQLite store, the
    folder ``mlartifacts`` beside its database (as ``mlflow server`` keeps them), since MLflow's
    client would otherwise put them in ``./mlruns`` under whatever folder the command runs in, a
    place neither the command nor the environment named; for any other store, None (the store's
    own default: a file store's folder, a server's artifact root)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):].split("?")[0])
    return (database.resolve().parent / ARTIFACTS).as_uri()


#: the tag that ties an MLflow run to its run folder (its absolute path)
RUN_DIR_TAG = "pyrovae.run_dir"


def run_of_folder(client, run_dir, experiment: str, hint: Optional[str] = None):
    """The MLflow run in ``client``'s store that logs ``run_dir``: the one tagged
    ``pyrovae.run_dir`` with this folder's path (``hint``, the folder's ``mlflow.json`` run id, is
    tried first and used only if its tag matches), else a new one in ``experiment``. Returns
    ``(run_id, experiment_id, created)``."""
    folder = str(Path(run_dir).resolve())
    if hint:
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(hint)
            if run.data.tags.get(RUN_DIR_TAG) == folder and run.info.lifecycle_stage == "active":
                return run.info.run_id, run.info.experiment_id, False
        except MlflowException as e:  # an id this store does not hold: not ours (an unreachable store: raised)
            if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                raise
    experiments = [e.experiment_id for e in client.search_experiments()]
    if experiments and "'" not in folder:  # (a path with a quote cannot be searched for: a new run)
        found = client.search_runs(experiments, filter_string=f"tags.`{RUN_DIR_TAG}` = '{folder}'", max_results=1)
        if found:
            return found[0].info.run_id, found[0].info.experiment_id, False
    known = client.get_experiment_by_name(experiment)
    experiment_id = known.experiment_id if known is not None else client.create_experiment(
        experiment, artifact_location=artifact_location(client.tracking_uri))
    run_id = client.create_run(experiment_id, run_name=Path(run_dir).name, tags={RUN_DIR_TAG: folder}).info.run_id
    return run_id, experiment_id, True


class MLflowLog(Callback):
    """An MLflow run for a pyrovae run (rank 0), in the experiment ``experiment`` at ``uri``.

    ``uri`` comes from the user (the module docstring): a fresh run's config, or the command line
    and environment of ``--resume``. A fresh run creates the MLflow run (named after the run
    folder, tagged with its path) and records its id in ``RUN_DIR/mlflow.json``; a resumed run
    continues the run of that store tagged with this folder (:func:`run_of_folder`), else it
    starts one. Either way the restored epochs not yet in MLflow are logged first, so a kill
    between the checkpoint and MLflow loses nothing and repeats nothing. Params are the resolved
    config, flattened; a key whose value changed on resume (e.g. ``train.epochs``, which MLflow
    params cannot change) is recorded as the tag ``resumed.KEY``. Every record key that is a
    number is a metric at the record's ``step``; ``config.toml`` is an artifact from the start,
    the figures (``figures/``) once drawn. The MLflow run ends ``FINISHED``, ``KILLED`` (a
    signal) or ``FAILED``. Any failure of MLflow is one :class:`~pyrovae.errors.TrackingError`
    line that says what the run folder kept.
    """

    def __init__(self, run_dir, config_dict: Dict, experiment: str, uri: str = ""):
        self.run_dir, self.config_dict, self.experiment = Path(run_dir), config_dict, experiment
        self.uri = mlflow_tracking_uri(run_dir, uri)
        self.client, self.run_id, self.status, self.failed = None, None, "FAILED", False

    @contextlib.contextmanager
    def guarded(self, what: str, trainer):
        """MLflow calls: any failure is one TrackingError line that names the store, what failed and
        what the run kept (the run folder's last good checkpoint)."""
        try:
            yield
        except Exception as e:
            self.failed = True
            raise TrackingError(f"{tracking_failed(self.uri, what, e)}; {trainer.kept()}") from None

    def on_start(self, trainer) -> None:
        if trainer.rank != 0:
            return
        with self.guarded("opening the MLflow run", trainer):
            self.client = mlflow_client(self.uri)
            record = _readable_record(self.run_dir)
            hint = record["run_id"] if record else None
            self.run_id, experiment_id, created = run_of_folder(self.client, self.run_dir, self.experiment, hint)
            if not created:
                self.client.update_run(self.run_id, status="RUNNING")
            if hint != self.run_id or record["tracking_uri"] != self.uri:
                text = json.dumps({"tracking_uri": self.uri, "experiment_id": experiment_id, "run_id": self.run_id,
                                   "experiment": self.experiment}, indent=2) + "\n"
                atomic_write_bytes(self.run_dir / MLFLOW, lambda f: f.write(text.encode()))
            self.log_params()
            logged = {m.step for m in self.client.get_metric_history(self.run_id, "epoch")}
            for past in trainer.metrics:
                if past["step"] not in logged:
                    self.log_record(past)
            if (self.run_dir / CONFIG).exists():
                self.client.log_artifact(self.run_id, str(self.run_dir / CONFIG))

    def log_params(self) -> None:
        from mlflow.entities import Param, RunTag

        have = self.client.get_run(self.run_id).data.params
        params = flat_params(self.config_dict)
        new = [Param(k, v) for k, v in params.items() if k not in have]
        changed = [RunTag(f"resumed.{k}", v) for k, v in params.items() if k in have and have[k] != v]
        for start in range(0, len(new), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=new[start:start + 100])
        if changed:
            self.client.log_batch(self.run_id, tags=changed)

    def log_record(self, record: Dict) -> None:
        log_metrics(self.client, self.run_id, record_metrics(record), int(record["step"]))

    def on_epoch_end(self, trainer, record: Dict) -> None:
        if self.client is not None:
            with self.guarded(f"logging epoch {record['epoch']}", trainer):
                self.log_record(record)

    def on_interrupt(self, trainer, mid_epoch: bool) -> Optional[str]:
        self.status = "KILLED"
        return None

    def on_end(self, trainer) -> None:
        if self.client is None:
            return
        with self.guarded("logging the figures", trainer):
            for name in FIGURES:
                if (self.run_dir / name).exists():
                    self.client.log_artifact(self.run_id, str(self.run_dir / name), "figures")
        self.status = "FINISHED"

    def on_close(self, trainer) -> None:
        if self.client is None or self.failed:  # after a failure the store is not asked again
            return
        if self.status != "FINISHED":  # the run is already ending with its own error: never mask it
            with contextlib.suppress(Exception):
                self.client.set_terminated(self.run_id, self.status)
            return
        with self.guarded("closing the MLflow run", trainer):
            self.client.set_terminated(self.run_id, self.status)


def log_metrics(client, run_id: str, metrics: Dict[str, float], step: int) -> None:
    """``metrics`` (name -> number) at ``step``, in one request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])


def log_evaluation(run_dir, uri: str, evaluation_file, result: Dict, step: int, experiment: str) -> str:
    """After ``evaluate``: ``evaluation_file`` as an artifact of the run's MLflow run in the store
    ``uri`` (the user's: :func:`opened_run_store`), and its numbers as metrics ``evaluation.KEY``
    at ``step`` (the evaluated checkpoint's). The MLflow run is the one of that store tagged with
    this folder (:func:`run_of_folder`), else a new one in ``experiment``. Returns its id; a
    failure is one TrackingError line (the JSON file is written by then)."""
    try:
        client = mlflow_client(uri)
        record = _readable_record(run_dir)
        run_id, _, _ = run_of_folder(client, run_dir, experiment, record["run_id"] if record else None)
        client.log_artifact(run_id, str(evaluation_file))
        log_metrics(client, run_id, {f"evaluation.{k}": v for k, v in record_metrics(result).items()}, step)
    except Exception as e:
        raise TrackingError(f"{tracking_failed(uri, 'logging the evaluation', e)}; {evaluation_file} is written") \
            from None
    return run_id


@CALLBACKS.register("tensorboard")
def tensorboard_callback(run_dir) -> TensorBoardLog:
    """``log.tensorboard = true`` (or ``"tensorboard"`` in ``log.callbacks``): event files in
    ``RUN_DIR/tensorboard``."""
    return TensorBoardLog(Path(run_dir) / "tensorboard")


@CALLBACKS.register("mlflow")
def mlflow_callback(run_dir, config) -> MLflowLog:
    """``log.mlflow = true`` (or ``"mlflow"`` in ``log.callbacks``): the run in MLflow, at the store the
    user names (``log.mlflow_uri`` of a fresh run's config, ``--mlflow``), in ``log.experiment``."""
    return MLflowLog(run_dir, config.to_dict(), config.log.experiment or config.data.name, config.log.mlflow_uri)
