"""A run folder names no destination: tracking goes only where the user's command line or
environment points, never where a folder's config.toml or mlflow.json says; credentials go only
there; a folder's record never downloads; a tracking failure is one line that says what was kept.
Each attack is tried for real: a logging HTTP server on 127.0.0.1, real MLflow file stores, a
real full tmpfs."""

import http.server
import json
import re
import threading
from pathlib import Path

import pytest
import torch
from conftest import fill_disk, one_line_error
from test_trust import rewrite

import pyrovae
from pyrovae import PyrovaeError, TrackingError, evaluate_run
from pyrovae.app.cli import main
from pyrovae.app.tracking import MLflowLog, opened_run_store, recorded_store, tracking_notice

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

EVALUATE = ["--nll-samples", "3", "--iwae-samples", "2", "--particles", "1", "-q"]


@pytest.fixture
def listener():
    """An HTTP server on 127.0.0.1 that records every request it gets (path and headers) and answers 500."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _any(self):
            seen.append((self.command, self.path, dict(self.headers)))
            self.send_response(500)
            self.end_headers()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def make_foreign(run, uri):
    """What an attacker hands over: a run folder whose config and checkpoint say it was tracked at
    ``uri``, with an mlflow.json naming a run there."""
    def tracked(d):
        d.setdefault("log", {}).update({"mlflow": True, "mlflow_uri": uri, "experiment": "x"})

    rewrite(run, config_edit=tracked)
    (run / "mlflow.json").write_text(json.dumps({"tracking_uri": uri, "experiment_id": "1", "run_id": "abc"}))


def commands(run, tmp_path):
    return (["evaluate", str(run), *EVALUATE],
            ["sample", str(run), "--out", str(tmp_path / "s.png")],
            ["encode", str(run), "--out", str(tmp_path / "z.npz")],
            ["train", "--out", str(run), "--resume", "--set", "train.epochs=3", "-q"])


def test_a_foreign_folder_sends_nothing_to_the_server_it_names(run_copy, tmp_path, listener, capsys, monkeypatch):
    uri, seen = listener
    make_foreign(run_copy, uri)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "secret-token")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for argv in commands(run_copy, tmp_path):
        assert main(argv) == 0, capsys.readouterr().err
        err = capsys.readouterr().err
        if argv[0] in ("evaluate", "train"):  # the record is shown in one line, not followed, not an error
            notice = [line for line in err.splitlines() if "tracked in MLflow" in line]
            assert len(notice) == 1 and uri in notice[0] and f"--mlflow {uri}" in notice[0], err
    assert seen == []  # no request at all, so no token either
    assert json.loads((run_copy / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] == 3  # it did resume


def test_a_foreign_file_store_outside_the_folder_is_never_created(run_copy, tmp_path, capsys):
    elsewhere = tmp_path / "not-yours" / "mlruns"
    make_foreign(run_copy, elsewhere.as_uri())
    for argv in commands(run_copy, tmp_path):
        assert main(argv) == 0, capsys.readouterr().err
    assert not (tmp_path / "not-yours").exists()


def test_the_users_own_store_gets_the_evaluation_and_the_foreign_one_nothing(run_copy, tmp_path, listener, capsys):
    uri, seen = listener
    make_foreign(run_copy, uri)
    mine = tmp_path / "mine"
    assert main(["evaluate", str(run_copy), *EVALUATE, "--mlflow", str(mine)]) == 0, capsys.readouterr().err
    assert "tracked in MLflow" not in capsys.readouterr().err  # the user named a store: no notice
    client = MlflowClient(tracking_uri=mine.as_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].data.tags["pyrovae.run_dir"] == str(run_copy.resolve())
    assert "evaluation.test_nll" in runs[0].data.metrics
    # the resume with --mlflow URI continues that same MLflow run, tagged with this folder
    assert main(["train", "--out", str(run_copy), "--resume", "--set", "train.epochs=3", "-q",
                 "--mlflow", str(mine)]) == 0, capsys.readouterr().err
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "epoch")] != []
    assert seen == []


def test_the_environment_continues_a_run_tracked_there_and_only_there(tmp_path, capsys, monkeypatch):
    store = (tmp_path / "store").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    run = tmp_path / "run"
    assert main(["train", "--set", "train.epochs=1", "--set", "model.encoder.hidden=[16]", "--set",
                 "model.decoder.hidden=[16]", "-q", "--out", str(run), "--mlflow"]) == 0
    record = json.loads((run / "mlflow.json").read_text())
    assert record["tracking_uri"] == store  # --mlflow without a URI: the environment's store
    capsys.readouterr()
    assert main(["evaluate", str(run), *EVALUATE]) == 0  # the environment points where the run was tracked
    client = MlflowClient(tracking_uri=store)
    assert "evaluation.test_nll" in client.get_run(record["run_id"]).data.metrics
    assert "tracked in MLflow" not in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "other").as_uri())  # elsewhere: nothing, and a notice
    assert main(["evaluate", str(run), *EVALUATE]) == 0
    assert "tracked in MLflow at" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_a_forged_run_id_never_logs_into_another_mlflow_run(tmp_path, monkeypatch):
    """mlflow.json is a hint checked against the run's folder tag: a foreign record that names the
    id of one of the user's other MLflow runs gets a run of its own instead."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = (tmp_path / "store").as_uri()
    client = MlflowClient(tracking_uri=store)
    victim = client.create_run(client.create_experiment("mine"), tags={"pyrovae.run_dir": "/elsewhere"}).info.run_id
    run = tmp_path / "run"
    run.mkdir()
    (run / "mlflow.json").write_text(json.dumps({"tracking_uri": store, "run_id": victim}))
    from pyrovae.app.tracking import mlflow_client, run_of_folder

    run_id, _, created = run_of_folder(mlflow_client(store), run, "digits", victim)
    assert run_id != victim and created
    assert client.get_run(run_id).data.tags["pyrovae.run_dir"] == str(run.resolve())


def test_where_an_opened_run_logs_comes_from_the_user_alone(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (run / "mlflow.json").write_text(json.dumps({"tracking_uri": "http://evil.example", "run_id": "x"}))
    recorded = recorded_store(run)
    assert recorded == "http://evil.example"
    assert opened_run_store(run, None, recorded) is None
    assert opened_run_store(run, True, recorded) == f"sqlite:///{(tmp_path / 'runs').resolve() / 'mlflow.db'}"
    assert opened_run_store(run, "sqlite:///mine.db", recorded) == "sqlite:///mine.db"
    assert tracking_notice(run, recorded, None, "pyrovae evaluate r").endswith(
        "pyrovae evaluate r --mlflow http://evil.example")
    assert tracking_notice(run, recorded, "sqlite:///mine.db", "pyrovae evaluate r") is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://evil.example")  # the user's own environment: followed
    assert opened_run_store(run, None, recorded) == "http://evil.example"
    assert opened_run_store(run, True, recorded) == "http://evil.example"


def test_a_fresh_config_is_the_users_program_and_names_its_store(tmp_path):
    config = tmp_path / "vae.toml"
    store = tmp_path / "chosen"
    config.write_text(f'[log]\nmlflow = true\nmlflow_uri = "{store}"\n[train]\nepochs = 1\n'
                      '[model]\nencoder = { name = "mlp", hidden = [16] }\n')
    assert main(["train", str(config), "-q", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "mlflow.json").read_text())["tracking_uri"] == store.as_uri()


def test_a_full_disk_under_the_mlflow_store_is_one_line_that_keeps_the_checkpoint(small_disk, tmp_path, capsys,
                                                                                   monkeypatch):
    original = MLflowLog.on_epoch_end

    def fill_then_log(self, trainer, record):
        if record["epoch"] == 2:
            fill_disk(small_disk)
        original(self, trainer, record)

    monkeypatch.setattr(MLflowLog, "on_epoch_end", fill_then_log)
    run = tmp_path / "run"
    code = main(["train", "--set", "train.epochs=3", "--set", "train.eval_every=1", "-q", "--out", str(run),
                 "--mlflow", str(small_disk / "mlruns")])
    err = one_line_error(capsys, code, "MLflow at 'file://")
    assert " failed (" in err and "No space left" in err and "unexpected" not in err, err
    kept = re.search(r"the last good checkpoint \(epoch (\d)\) is kept in (\S+)$", err.strip())
    assert kept and int(kept.group(1)) >= 2 and Path(kept.group(2)) == run, err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["counters"]["epoch"] == int(kept.group(1))


def test_evaluate_to_an_unwritable_store_keeps_its_json(run_copy, tmp_path, capsys):
    store = tmp_path / "store-file"
    store.write_text("not a folder")  # a file where the store's folder should be
    code = main(["evaluate", str(run_copy), *EVALUATE, "--mlflow", str(store / "mlruns")])
    err = one_line_error(capsys, code, "MLflow at 'file://")
    assert "logging the evaluation failed" in err and "evaluation.json is written" in err
    assert json.loads((run_copy / "evaluation.json").read_text())["test_nll"] > 0


def test_a_folder_that_names_a_download_downloads_nothing(run_copy, tmp_path, capsys):
    target = tmp_path / "somewhere"

    def to_mnist(d):
        d["data"].update({"name": "mnist", "path": str(target), "download": True})

    rewrite(run_copy, config_edit=to_mnist)
    for argv in commands(run_copy, tmp_path)[::3]:  # evaluate and the resume
        code = main(argv)
        err = one_line_error(capsys, code, "never downloads")
        assert "%" not in err  # no progress bar beside the line
    assert not target.exists()


def test_tracking_error_is_a_pyrovae_error():
    assert issubclass(TrackingError, PyrovaeError) and "TrackingError" in pyrovae.__all__


def test_evaluate_run_in_python_takes_the_store_as_an_argument(run_copy, tmp_path):
    store = tmp_path / "py-store"
    evaluate_run(run_copy, nll_samples=3, iwae_samples=2, elbo_particles=1, mlflow=str(store))
    client = MlflowClient(tracking_uri=Path(store).as_uri())
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1


def test_an_unreachable_store_is_one_line_soon(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the user's environment wins over pyrovae's defaults
    code = main(["train", "--set", "train.epochs=1", "-q", "--out", str(tmp_path / "run"),
                 "--mlflow", f"http://127.0.0.1:{port}"])
    err = one_line_error(capsys, code, f"MLflow at 'http://127.0.0.1:{port}': opening the MLflow run failed")
    assert "no checkpoint was written" in err and not (tmp_path / "run").exists()


def test_mlflow_retries_briefly_unless_the_environment_says_otherwise(monkeypatch):
    from pyrovae.app.tracking import HTTP_DEFAULTS, mlflow_client

    for name in HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    mlflow_client("http://127.0.0.1:9")
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
