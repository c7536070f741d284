"""MLflow tracking (log.mlflow): a run, its resume and its evaluation read back from a real file store."""

import json
import os
import sys

import pytest

from pyrovae import Config, ConfigError, evaluate_run, train
from pyrovae.app.tracking import flat_params, mlflow_tracking_uri

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

SMALL = {"name": "mlp", "hidden": [32]}


def small_config(epochs: int, tracked: bool = True) -> Config:
    config = Config()
    config.model.encoder = config.model.decoder = SMALL
    config.train.progress = False
    config.train.epochs = epochs
    config.train.eval_every = 1
    config.train.batch_size = 200
    config.log.mlflow = tracked
    return config


def store(run):
    uri = mlflow_tracking_uri(run)
    assert uri == f"sqlite:///{run.parent.resolve() / 'mlflow.db'}"  # the default: a database beside the run folder
    assert (run.parent / "mlflow.db").is_file() and not (run.parent / "mlruns").exists()
    # a user's own client opens it as it is: MLflow 3 opens a file store only with MLFLOW_ALLOW_FILE_STORE set
    os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
    return MlflowClient(tracking_uri=uri)


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_run_its_resume_and_its_evaluation_are_one_mlflow_run(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"  # where the command runs: MLflow's client would write ./mlruns there
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = train(small_config(2), tmp_path / "run")
    client = store(run)
    run_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    experiment = client.get_experiment(logged.info.experiment_id)
    assert experiment.name == "digits"  # the data set's name
    assert experiment.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()  # beside the database
    assert (tmp_path / "mlartifacts" / run_id / "artifacts" / "config.toml").is_file()
    params = logged.data.params
    assert params["model.latent_dim"] == "2" and params["data.name"] == "digits" and params["train.epochs"] == "2"
    assert params["model.encoder.hidden"] == "[32]" and params["optim.lr"] == "0.001"
    history = client.get_metric_history(run_id, "test_elbo")
    assert [(m.step, m.value) for m in history] == [(r["step"], r["test_elbo"]) for r in records(run)]
    assert {"train_elbo", "learning_rate", "active_units", "epoch"} <= set(logged.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.toml", "figures"} <= artifacts
    assert {"figures/samples.png", "figures/elbo.png"} <= {a.path for a in client.list_artifacts(run_id, "figures")}

    resumed = train(small_config(4), run, resume=True)
    assert json.loads((resumed / "mlflow.json").read_text())["run_id"] == run_id
    assert [r.info.run_id for r in client.search_runs([logged.info.experiment_id])] == [run_id]
    again = client.get_run(run_id)
    assert again.info.status == "FINISHED"
    assert again.data.params["train.epochs"] == "2" and again.data.tags["resumed.train.epochs"] == "4"
    epochs = client.get_metric_history(run_id, "epoch")
    assert [(m.step, m.value) for m in epochs] == [(r["step"], r["epoch"]) for r in records(run)]
    assert [m.value for m in epochs] == [1, 2, 3, 4]  # each epoch once, across the resume

    evaluate_run(run, nll_samples=5, iwae_samples=5, elbo_particles=2)  # not asked to: nothing logged
    assert "evaluation.json" not in {a.path for a in client.list_artifacts(run_id)}
    result = evaluate_run(run, nll_samples=5, iwae_samples=5, elbo_particles=2, mlflow=True)
    assert "evaluation.json" in {a.path for a in client.list_artifacts(run_id)}
    nll = client.get_metric_history(run_id, "evaluation.test_nll")
    assert [(m.step, m.value) for m in nll] == [(records(run)[-1]["step"], pytest.approx(result["test_nll"]))]
    assert list(elsewhere.iterdir()) == []  # nothing where the command ran


def test_a_run_that_turns_tracking_on_when_resumed_logs_its_earlier_epochs(tmp_path):
    run = train(small_config(2, tracked=False), tmp_path / "run")
    assert not (run / "mlflow.json").exists()
    train(small_config(3), run, resume=True)
    run_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    history = store(run).get_metric_history(run_id, "train_elbo")
    assert [(m.step, m.value) for m in history] == [(r["step"], r["train_elbo"]) for r in records(run)]
    assert len(history) == 3


def test_the_tracking_uri_and_experiment_are_settings(tmp_path):
    config = small_config(1)
    config.log.mlflow_uri = str(tmp_path / "elsewhere")  # a path is a file store
    config.log.experiment = "counts study"
    run = train(config, tmp_path / "run")
    client = MlflowClient(tracking_uri=(tmp_path / "elsewhere").as_uri())
    experiment = client.get_experiment_by_name("counts study")
    assert experiment is not None and len(client.search_runs([experiment.experiment_id])) == 1
    assert not (tmp_path / "mlruns").exists()
    assert json.loads((run / "mlflow.json").read_text())["tracking_uri"] == (tmp_path / "elsewhere").as_uri()


def test_flat_params_and_a_missing_package(monkeypatch):
    assert flat_params({"model": {"prior": {"name": "vamp", "num_pseudo": 5}, "latent_dim": 2}, "optim": {}}) == {
        "model.prior.name": "vamp", "model.prior.num_pseudo": "5", "model.latent_dim": "2", "optim": "{}"}
    monkeypatch.setitem(sys.modules, "mlflow", None)
    config = Config()
    config.log.mlflow = True
    with pytest.raises(ConfigError, match=r"log.mlflow = true needs the mlflow package: .*pyrovae\[mlflow\]"):
        config.check()
