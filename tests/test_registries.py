"""Formats and callbacks are registries like the others: a plugin adds a data format and a
callback, each one class in one file, and a TOML config uses both; the built-in suffixes and
TensorBoard and MLflow are entries of them."""

import json

import numpy as np
import pytest

import pyrovae
from pyrovae.app.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::pyrovae.PosteriorCollapseWarning")

PLUGIN = '''
import numpy as np

import pyrovae
from pyrovae.data.regular import open_regular


@pyrovae.FORMATS.register(".tsv")
class TabSeparated(pyrovae.Format):
    """Tab-separated numbers, the last column the label."""

    def arrays(self, path, where):
        with open_regular(path, where) as f:
            table = np.loadtxt(f, delimiter="\\t", dtype=np.float32, ndmin=2)
        return {"x": table[:, :-1], "y": table[:, -1].astype(np.int64)}


@pyrovae.CALLBACKS.register("epoch_log")
class EpochLog(pyrovae.Callback):
    """Writes each epoch's ELBO to a file in the run folder."""

    def __init__(self, run_dir, every: int = 1):
        self.path, self.every = run_dir / "epochs.txt", every

    def on_epoch_end(self, trainer, record):
        if record["epoch"] % self.every == 0:
            with open(self.path, "a") as f:
                f.write(f"{record['epoch']} {record['train_elbo']:.4f}\\n")
'''


@pytest.fixture
def project(tmp_path):
    (tmp_path / "extras.py").write_text(PLUGIN)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    points = rng.random((200, 6)) * 0.2 + np.eye(3)[labels].repeat(2, axis=1) * 0.7
    np.savetxt(tmp_path / "points.tsv", np.column_stack([points, labels]), delimiter="\t", fmt="%.5f")
    (tmp_path / "run.toml").write_text(
        '[plugins]\nmodules = ["extras.py"]\n\n[data]\nname = "file"\npath = "points.tsv"\n\n'
        '[model]\nlikelihood = "continuous_bernoulli"\n\n'
        '[train]\nepochs = 4\nbatch_size = 50\nprogress = false\neval_every = 2\n\n'
        '[log]\ncallbacks = [{ name = "epoch_log", every = 2 }]\n')
    return tmp_path


def test_a_plugin_adds_a_format_and_a_callback_and_a_config_uses_both(project, monkeypatch):
    monkeypatch.chdir(project)
    run = project / "run"
    assert main(["train", str(project / "run.toml"), "--out", str(run), "-q"]) == 0
    assert [line.split()[0] for line in (run / "epochs.txt").read_text().splitlines()] == ["2", "4"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4 and records[-1]["test_elbo"] is not None
    recorded = pyrovae.load_config(str(run / "config.toml"), plugins=[str(project / "extras.py")])
    assert recorded.log.callbacks == [{"name": "epoch_log", "every": 2}]
    # resumed, with its plugin named: the callback is built again from the run's config
    assert main(["train", "--out", str(run), "--resume", "--plugins", str(project / "extras.py"), "--set",
                 "train.epochs=6", "-q"]) == 0
    assert (run / "epochs.txt").read_text().splitlines()[-1].split()[0] == "6"


def test_the_built_in_suffixes_and_callbacks_are_entries_and_an_unknown_one_is_one_line(tmp_path, capsys):
    assert {".npy", ".npz", ".pt", ".h5", ".hdf5", ".h5ad", ".zarr", ".csv"} <= set(pyrovae.FORMATS.names())
    assert {"tensorboard", "mlflow"} <= set(pyrovae.CALLBACKS.names())
    config = pyrovae.load_config(None, ['log.callbacks=["tensorboard"]'])
    assert config.log.tensorboard and config.log.callbacks == []  # the same as log.tensorboard = true
    assert main(["train", "--set", 'log.callbacks=["nope"]', "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "log.callbacks[0]: unknown callback 'nope'" in err and "--plugins" in err
    assert not (tmp_path / "run").exists()
    assert main(["train", "--set", 'log.callbacks=[3]', "-q"]) == 2
    assert "log.callbacks[0] = 3: expected a callback's name" in capsys.readouterr().err


def test_a_run_folders_recorded_mlflow_callback_is_not_followed():
    from pyrovae.app.run_record import without_destinations

    record = {"log": {"callbacks": ["mlflow", {"name": "mlflow"}, "epoch_log"], "mlflow_uri": "http://x"}}
    assert without_destinations(record)["log"] == {"callbacks": ["epoch_log"]}
