"""``pyrovae tune``: a search on Optuna whose trials are run folders; it prunes, writes best.toml
(which trains as is), goes on after a stop or a kill without repeating a trial, runs one study from
two processes sharing a storage, and refuses bad input in one line."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import one_line_error

import pyrovae
from pyrovae.app.cli import main

optuna = pytest.importorskip("optuna")
# a trial of a small latent space may collapse units: a warning, as for pyrovae train
pytestmark = pytest.mark.filterwarnings("ignore::pyrovae.training.loop.PosteriorCollapseWarning")
ROOT = Path(__file__).resolve().parents[1]

SEARCH = """
[data]
validation_fraction = 0.2

[model]
encoder = { name = "mlp", hidden = [32] }
decoder = { name = "mlp", hidden = [32] }

[train]
epochs = {epochs}
eval_every = 1

[tune]
trials = {trials}
sampler = {sampler}
pruner = {{ name = "median", n_startup_trials = 2 }}

[tune.space]
"optim.lr" = {{ low = 1e-5, high = 3e-2, log = true }}
"model.latent_dim" = {{ low = 2, high = 6 }}
"model.prior" = ["standard_normal", "mixture"]
"""


def search(path: Path, trials=6, epochs=3, sampler='{ name = "random", seed = 3 }') -> Path:
    path.write_text(SEARCH.replace("{epochs}", str(epochs)).replace("{trials}", str(trials))
                    .replace("{sampler}", sampler).replace("{{", "{").replace("}}", "}"))
    return path


def rows(study: Path):
    return list(csv.DictReader((study / "trials.csv").read_text().splitlines()))


def finished(study_dir: Path, name=None):
    storage = f"sqlite:///{study_dir / 'study.db'}"
    study = optuna.load_study(study_name=name or study_dir.name, storage=storage)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study, study.get_trials(states=states)


def test_a_search_prunes_writes_its_files_and_best_toml_trains_as_is(tmp_path, capsys):
    config = search(tmp_path / "search.toml")
    study_dir = tmp_path / "study"
    assert main(["tune", str(config), "--out", str(study_dir), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("tune: trial ") == 6  # a line per finished trial
    study, done = finished(study_dir)
    states = [t.state for t in done]
    assert len(done) == 6 and optuna.trial.TrialState.PRUNED in states  # the median pruner stopped some
    assert len({tuple(sorted(t.params.items())) for t in done}) == 6
    for t in done:  # each trial is a run folder: its config has the trial's values, its metrics its reports
        run = study_dir / t.user_attrs["run_dir"]
        model = pyrovae.load(run)
        assert model.latent_dim == t.params["model.latent_dim"]
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert {r["epoch"]: r["validation_elbo"] for r in records} == pytest.approx(t.intermediate_values)
        if t.state == optuna.trial.TrialState.COMPLETE:  # its value: its best validation ELBO (best.pt's epoch)
            assert t.value == pytest.approx(max(r["validation_elbo"] for r in records))
            assert len(records) == 3
    best = study.best_trial
    table = rows(study_dir)
    assert [r["number"] for r in table] == [str(t.number) for t in study.trials]
    text = (study_dir / "best.toml").read_text()
    assert "[tune" not in text and f"trial {best.number}" in text
    for name in ("history.png", "importance.png"):
        assert (study_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{best.value:.4f}" in out and "pyrovae train" in out

    # best.toml trains as is, to the best trial's numbers (the same config, seed and data)
    assert main(["train", "-q", str(study_dir / "best.toml"), "--out", str(tmp_path / "again")]) == 0
    again = [json.loads(line) for line in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["validation_elbo"] for r in again) == pytest.approx(best.value, abs=1e-4)

    # the same command again: the study is done, nothing runs
    assert main(["tune", str(config), "--out", str(study_dir)]) == 0
    assert "already has 6 finished trials" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="study", storage=f"sqlite:///{study_dir / 'study.db'}").trials) == \
        len(study.trials)
    # a config with a [tune] table trains its own values under pyrovae train
    assert main(["train", "-q", str(config), "--out", str(tmp_path / "base"), "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    # the study is maximized (an ELBO): continuing it minimizing the NLL is refused
    code = main(["tune", str(config), "--out", str(study_dir), "--set", "tune.metric=test_nll"])
    one_line_error(capsys, code, "study 'study' there is maximized, this search is minimized")


def tune_process(config, study_dir, *more, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pyrovae", "tune", str(config), "--out", str(study_dir),
                             "--threads", "1", *more], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def wait_for_epoch(process, run: Path) -> None:
    metrics = run / "metrics.jsonl"
    while process.poll() is None and not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()


def test_a_stopped_then_killed_study_goes_on_and_the_stopped_trial_resumes_its_folder(tmp_path, capsys):
    config = search(tmp_path / "search.toml", trials=3, epochs=3, sampler='"random"')
    # every trial runs its 3 epochs
    config.write_text(config.read_text().replace('{ name = "median", n_startup_trials = 2 }', '"none"'))
    study_dir = tmp_path / "study"
    stopped = tune_process(config, study_dir)
    wait_for_epoch(stopped, study_dir / "trial-0000")
    stopped.send_signal(signal.SIGINT)  # Ctrl-C: the trial saves a checkpoint, the study stops
    out, err = stopped.communicate(timeout=300)
    assert stopped.returncode == 130 and "run the same pyrovae tune command again" in err, err

    killed = tune_process(config, study_dir)  # goes on: trial 0 again, in its own folder, resumed
    wait_for_epoch(killed, study_dir / "trial-0002")
    killed.kill()  # no chance to save anything
    killed.communicate(timeout=60)

    assert main(["tune", str(config), "--out", str(study_dir)]) == 0
    study, done = finished(study_dir)
    assert len(done) == 3
    assert len({tuple(sorted(t.params.items())) for t in done}) == 3  # no trial repeated
    first = study.trials[0]
    assert first.state == optuna.trial.TrialState.FAIL
    (resumed,) = [t for t in done if t.user_attrs["run_dir"] == "trial-0000"]
    assert resumed.number > 0 and resumed.params == first.params
    records = [json.loads(line) for line in (study_dir / "trial-0000" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]  # none lost or repeated
    assert resumed.value == pytest.approx(max(r["validation_elbo"] for r in records))


def test_two_processes_sharing_one_storage_run_one_study_without_repeating_a_trial(tmp_path, capsys):
    """Another process and this one, at the same time, on one SQLite storage: each runs trials."""
    config = search(tmp_path / "search.toml", trials=4, epochs=3, sampler='"random"')
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    other = tune_process(config, tmp_path / "study", "--storage", storage)
    wait_for_epoch(other, tmp_path / "study" / "trial-0000")  # the other is under way
    assert main(["tune", str(config), "--out", str(tmp_path / "study"), "--storage", storage]) == 0
    out, err = other.communicate(timeout=600)
    assert other.returncode == 0, err
    assert out.count("tune: trial ") >= 1 and capsys.readouterr().out.count("tune: trial ") >= 1
    study = optuna.load_study(study_name="study", storage=storage)
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) >= 4 and len(study.trials) == len(done)  # each stops once the study holds 4
    folders = [t.user_attrs["run_dir"] for t in done]
    assert len(set(folders)) == len(folders) and all((tmp_path / "study" / f / "config.toml").is_file()
                                                     for f in folders)
    assert len({tuple(sorted(t.params.items())) for t in done}) == len(done)
    assert not (tmp_path / "study" / "study.db").exists()  # the storage named, nothing beside it


@pytest.mark.parametrize("change, pattern", [
    ('"optim.lrr" = { low = 1e-4, high = 1e-2 }', "optim.lrr: unknown option of optimizer"),
    ('"optim.lr" = { low = 1e-2, high = 1e-4 }', "an empty range"),
    ('"optim.lr" = { low = 0.0, high = 1e-2, log = true }', "log = true needs low > 0"),
    ('"model.latent_dim" = []', "an empty list of choices"),
    ('"model.prior" = ["standard_normal", "nope"]', "unknown prior 'nope'"),
    ('"model.latent_dim" = { low = 2 }', "a range takes low and high"),
])
def test_a_bad_space_is_one_line_and_leaves_nothing(tmp_path, capsys, change, pattern):
    config = tmp_path / "bad.toml"
    config.write_text(f"[data]\nvalidation_fraction = 0.2\n[tune.space]\n{change}\n")
    code = main(["tune", str(config), "--out", str(tmp_path / "study")])
    one_line_error(capsys, code, pattern)
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("args, pattern", [
    (["--storage", "nosuchdialect://x"], "--storage 'nosuchdialect://x': cannot open it"),
    (["--storage", "sqlite:////nonexistent/folder/x.db"], "cannot open it"),
    (["--set", "tune.metric=nll"], "tune.metric = 'nll': valid: validation_elbo, test_elbo, test_nll"),
    (["--set", "tune.sampler=\"grid\""], "tune.sampler = 'grid': valid: tpe"),
    (["--set", "tune.pruner={ name = \"median\", patience = 2 }"], "tune.pruner.'patience': not an option"),
    (["--trials", "0"], "--trials 0"),
    (["--set", "data.validation_fraction=0"], "needs a validation split"),
])
def test_bad_tune_input_is_one_line_and_leaves_nothing(tmp_path, capsys, args, pattern):
    config = search(tmp_path / "search.toml")
    code = main(["tune", str(config), "--out", str(tmp_path / "study"), *args])
    one_line_error(capsys, code, pattern)
    assert not (tmp_path / "study").exists()



def test_trials_that_cannot_train_fail_on_their_lines_and_five_in_a_row_stop_the_study(tmp_path, capsys):
    config = tmp_path / "fail.toml"
    config.write_text('[data]\nvalidation_fraction = 0.2\n[train]\nepochs = 1\n[tune]\ntrials = 3\n'
                      '[tune.space]\n"optim.lr" = { low = 1e6, high = 1e7, log = true }\n')
    code = main(["tune", str(config), "--out", str(tmp_path / "study")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out.count("failed: non-finite loss") == 5
    assert captured.err.startswith("pyrovae: error: tune: 5 trials in a row failed") and captured.err.count("\n") == 1
    assert [r["state"] for r in rows(tmp_path / "study")] == ["fail"] * 5
