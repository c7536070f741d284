"""Experiment trackers beside the run folder, as callbacks of the loop (rank 0 alone writes):

- :class:`TensorBoardLog` (``log.tensorboard``): event files in ``RUN_DIR/tensorboard``.
- :class:`MLflowLog` (``log.mlflow``): one MLflow run per pyrovae run, continued by ``--resume``:
  the resolved config flattened as params, every ``metrics.jsonl`` key as a metric at its
  step, ``config.toml`` and the figures as artifacts, and :func:`log_evaluation` adds
  ``evaluation.json``. The MLflow run's id is kept in ``RUN_DIR/mlflow.json``.

Both import their package only when a run asks for them (``pyrovae[tensorboard]``,
``pyrovae[mlflow]``).
"""

import json
import math
import os
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from pyrovae.app.files import CONFIG, FIGURES, MLFLOW, atomic_write_bytes
from pyrovae.errors import RunDirError, one_line
from pyrovae.rng import seeded
from pyrovae.training.loop import Callback

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
                grids = {"samples": trainer.model.sample(64),
                         "reconstructions": torch.cat([x.x, trainer.model.reconstruct(x)])}
            for tag, images in grids.items():
                grid = image_grid(as_images(images, trainer.model.event_shape), 8 if tag == "samples" else 16)
                tb.add_image(tag, grid.clip(0, 1), epoch, dataformats="HWC" if grid.ndim == 3 else "HW")
        tb.flush()

    def on_close(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()


def mlflow_tracking_uri(run_dir, uri: str = "") -> str:
    """The tracking URI of ``log.mlflow_uri``: as given, or (``""``, the default) a local file store,
    the folder ``mlruns`` beside the run folder (``runs/mlruns`` for ``runs/digits-...``). A path
    without a scheme is a file store too."""
    if not uri:
        return (Path(run_dir).resolve().parent / "mlruns").as_uri()
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return Path(uri).resolve().as_uri()
    return uri


def mlflow_client(uri: str):
    """An ``MlflowClient`` for ``uri``. MLflow 3 refuses a file store unless ``MLFLOW_ALLOW_FILE_STORE``
    is set: a run that names one (the default) has chosen it, so it is allowed for such URIs."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
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
    """``RUN_DIR/mlflow.json`` (``tracking_uri``, ``experiment_id``, ``run_id``), or None if absent."""
    path = Path(run_dir) / MLFLOW
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunDirError(f"{path}: cannot read ({type(e).__name__}: {one_line(str(e), 100)})") from None
    if not (isinstance(record, dict) and all(isinstance(record.get(k), str) for k in ("tracking_uri", "run_id"))):
        raise RunDirError(f"{path}: malformed: expected a JSON object with tracking_uri and run_id strings")
    return record


class MLflowLog(Callback):
    """An MLflow run for a pyrovae run (rank 0), in the experiment ``experiment`` at ``uri``.

    A fresh run creates the MLflow run (named after the run folder) and records its id in
    ``RUN_DIR/mlflow.json``; a resumed run whose record names the same tracking URI continues
    that MLflow run, else it starts one. Either way the restored epochs not yet in MLflow are
    logged first, so a kill between the checkpoint and MLflow loses nothing and repeats nothing.
    Params are the resolved config, flattened; a key whose value changed on resume (e.g.
    ``train.epochs``, which MLflow params cannot change) is recorded as the tag ``resumed.KEY``.
    Every record key that is a number is a metric at the record's ``step``; ``config.toml`` is an
    artifact from the start, the figures (``figures/``) once drawn. The MLflow run ends
    ``FINISHED``, ``KILLED`` (a signal) or ``FAILED``.
    """

    def __init__(self, run_dir, config_dict: Dict, experiment: str, uri: str = ""):
        self.run_dir, self.config_dict, self.experiment = Path(run_dir), config_dict, experiment
        self.uri = mlflow_tracking_uri(run_dir, uri)
        self.client, self.run_id, self.status = None, None, "FAILED"

    def on_start(self, trainer) -> None:
        if trainer.rank != 0:
            return
        self.client = mlflow_client(self.uri)
        record = read_mlflow_record(self.run_dir)
        if record is not None and record["tracking_uri"] == self.uri:
            self.run_id = record["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            found = self.client.get_experiment_by_name(self.experiment)
            experiment_id = found.experiment_id if found is not None else self.client.create_experiment(self.experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=self.run_dir.name,
                                                 tags={"pyrovae.run_dir": str(self.run_dir.resolve())}).info.run_id
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
            self.log_record(record)

    def on_interrupt(self, trainer, mid_epoch: bool) -> Optional[str]:
        self.status = "KILLED"
        return None

    def on_end(self, trainer) -> None:
        if self.client is None:
            return
        for name in FIGURES:
            if (self.run_dir / name).exists():
                self.client.log_artifact(self.run_id, str(self.run_dir / name), "figures")
        self.status = "FINISHED"

    def on_close(self, trainer) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, self.status)


def log_metrics(client, run_id: str, metrics: Dict[str, float], step: int) -> None:
    """``metrics`` (name -> number) at ``step``, in one request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])


def log_evaluation(run_dir, uri: str, evaluation_file, result: Dict, step: int) -> Optional[str]:
    """After ``evaluate``: ``evaluation_file`` as an artifact of the run's MLflow run, and its numbers
    as metrics ``evaluation.KEY`` at ``step`` (the evaluated checkpoint's). ``uri`` is the run's
    ``log.mlflow_uri``: the run's ``mlflow.json`` must name the same store (what a folder holds
    never picks where pyrovae connects). Returns the run id, or None where the run has no MLflow
    run there."""
    record = read_mlflow_record(run_dir)
    if record is None or record["tracking_uri"] != mlflow_tracking_uri(run_dir, uri):
        return None
    client = mlflow_client(record["tracking_uri"])
    client.log_artifact(record["run_id"], str(evaluation_file))
    log_metrics(client, record["run_id"], {f"evaluation.{k}": v for k, v in record_metrics(result).items()}, step)
    return record["run_id"]
