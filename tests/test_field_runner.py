"""docs/results/field_mnist.py, the runner of the field's rows: a row interrupted and run again goes
on from its checkpoint; each row is evaluated once and written to the CSV beside the rows already
there, with the page's table."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "docs" / "results" / "field_mnist.py"
#: the first row's config on the embedded digits, with small networks: the runner's mechanics, not the protocol
SMALL = """
[data]
name = "digits"
validation_fraction = 0.2
[model]
latent_dim = 4
encoder = { name = "mlp", hidden = [16], activation = "gated", log_var_range = [-6.0, 2.0] }
decoder = { name = "mlp", hidden = [16], activation = "gated" }
[train]
epochs = 3
batch_size = 100
estimator = "mc"
kl_warmup_epochs = 3
eval_every = 1
early_stopping = { metric = "validation_elbo", patience = 50 }
[optim]
name = "adam"
lr = 5e-4
"""


def small_configs(folder: Path) -> Path:
    configs = folder / "configs"
    configs.mkdir(exist_ok=True)
    (configs / "vae_static_mnist.toml").write_text(SMALL)
    return configs


def runner(runs, csv_path, *extra, **popen):
    configs = small_configs(runs.parent)
    command = [sys.executable, str(RUNNER), "--runs", str(runs), "--configs", str(configs), "--rows",
               "vae_static_mnist", "--nll-samples", "20", "--csv", str(csv_path), *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def records(run):
    keep = ("epoch", "step", "train_elbo", "train_objective", "validation_elbo", "test_elbo", "beta")
    return [{k: json.loads(line)[k] for k in keep} for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_row_interrupted_and_run_again_goes_on_from_its_checkpoint_and_is_scored_once(tmp_path, monkeypatch,
                                                                                       capsys):
    """The runner resumes a row with ``pyrovae train --resume`` (bit for bit: tests/test_reliability.py
    and tests/test_runfolder.py), so the row's epochs follow on, none lost or repeated."""
    cut = runner(tmp_path / "runs", tmp_path / "field.csv", start_new_session=True)
    run = tmp_path / "runs" / "vae_static_mnist"
    while cut.poll() is None and not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text()):
        time.sleep(0.02)
    os.killpg(cut.pid, signal.SIGTERM)  # as a terminal's Ctrl-C reaches the runner (and only it)
    out, err = cut.communicate(timeout=600)
    assert cut.returncode != 0 and "run the same command again to resume it" in err, (out, err)
    assert len(records(run)) < 3 and not (tmp_path / "field.csv").exists()

    # run again, in this process (its commands, pyrovae train --resume and evaluate, in their own)
    field_mnist = runner_module()
    monkeypatch.chdir(ROOT)
    assert field_mnist.main(["--runs", str(tmp_path / "runs"), "--configs", str(small_configs(tmp_path)), "--rows",
                             "vae_static_mnist", "--nll-samples", "20", "--csv", str(tmp_path / "field.csv")]) == 0
    assert f"pyrovae train -o {run} --resume" in capsys.readouterr().out
    assert [r["epoch"] for r in records(run)] == [1, 2, 3]
    evaluation = json.loads((run / "evaluation_best.json").read_text())
    assert evaluation["nll_samples"] == 20 and evaluation["checkpoint"] == "best"
    (row,) = csv.DictReader((tmp_path / "field.csv").read_text().splitlines())
    assert float(row["test_nll"]) == round(evaluation["test_nll"], 2) and row["best_epoch"] == str(evaluation["epoch"])
    assert row["row"] == "vae_static_mnist" and row["paper_nll"] == "88.56" and row["reached"] == "no"
    assert row["protocol"] == "own config" and row["data"] == "digits" and row["epochs_trained"] == "3"
    table = (tmp_path / "field.md").read_text()
    assert table == runner_module().markdown_table({"vae_static_mnist": row})
    assert f"| VAE | standard normal | 88.56 | 89.78 | {float(row['test_nll']):.2f} |" in table
    assert float((tmp_path / "runs" / "vae_static_mnist.seconds").read_text()) > 0

    # a scored row is only read: no command runs
    args = field_mnist.parse_args(["--runs", str(tmp_path / "runs"), "--configs", str(tmp_path / "configs")])
    monkeypatch.setattr(field_mnist.WallClock, "run", lambda clock, command: pytest.fail(f"ran {command}"))
    assert {k: str(v) for k, v in field_mnist.run_row(field_mnist.ROWS[0], args).items()} == row


def runner_module():
    sys.path.insert(0, str(RUNNER.parent))
    try:
        import field_mnist
    finally:
        sys.path.remove(str(RUNNER.parent))
    return field_mnist


def test_the_pages_table_is_the_committed_csvs():
    """docs/field.md shows docs/results/field_mnist.md: it must be what the CSV says."""
    field_mnist = runner_module()
    committed = field_mnist.CSV.with_suffix(".md").read_text()
    assert committed == field_mnist.markdown_table(field_mnist.read_csv(field_mnist.CSV))


def test_the_csv_keeps_the_rows_it_did_not_score(tmp_path):
    field_mnist = runner_module()

    def line(row, nll):
        numbers = dict(difference=0.5, wall_hours=1.0, epochs_trained=10, best_epoch=5, threads=1)
        return {**{key: "x" for key in field_mnist.FIELDS}, **numbers, "row": row, "test_nll": nll}

    path = tmp_path / "t.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, field_mnist.FIELDS)
        writer.writeheader()
        writer.writerows([line("hvae_static_mnist", 86.1), line("something_else", 1)])
    field_mnist.write_csv(path, {"vae_static_mnist": line("vae_static_mnist", 89.0)}, tmp_path)
    lines = list(csv.DictReader(path.read_text().splitlines()))
    assert [(r["row"], r["test_nll"]) for r in lines] == [("vae_static_mnist", "89.0"), ("hvae_static_mnist", "86.1"),
                                                          ("something_else", "1")]
    table = (tmp_path / "t.md").read_text()
    assert "| 89.00 |" in table and "| 86.10 |" in table and table.count("not run to its end yet") == 2


def test_the_wall_clock_is_on_disk_while_a_command_runs(tmp_path, monkeypatch):
    """A runner killed outright (no finally runs) keeps the row's time up to its last save."""
    field_mnist = runner_module()
    clock = field_mnist.WallClock(tmp_path, "row")
    monkeypatch.setattr(clock, "SAVE_EVERY", 0.1)
    marker = tmp_path / "x.seconds"
    code = (f"import pathlib, time\nfor _ in range(600):\n    time.sleep(0.05)\n"
            f"    if pathlib.Path({str(tmp_path / 'row.seconds')!r}).is_file():\n"
            f"        pathlib.Path({str(marker)!r}).write_text('seen')\n        break\n")
    assert clock.run([sys.executable, "-c", code]) == 0
    assert marker.read_text() == "seen"  # the command saw the file before it ended
    assert float((tmp_path / "row.seconds").read_text()) == pytest.approx(clock.seconds, abs=0.1)


def running(pid: int) -> bool:
    """Whether a process runs (an ended one its new parent has not reaped yet counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_runner_killed_outright_ends_its_command(tmp_path):
    """SIGKILL to the runner (no handler runs): its command gets a SIGTERM, and does not go on alone."""
    pid_file = tmp_path / "child.pid"
    code = ("import os, pathlib, signal, sys, time\n"
            f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
            "signal.signal(signal.SIGTERM, lambda n, f: sys.exit(0))\n"
            "time.sleep(600)\n")
    script = (f"import pathlib, sys; sys.path.insert(0, {str(RUNNER.parent)!r}); import field_mnist\n"
              f"clock = field_mnist.WallClock(pathlib.Path({str(tmp_path)!r}), 'row')\n"
              f"clock.run([sys.executable, '-c', {code!r}])\n")
    runner_process = subprocess.Popen([sys.executable, "-c", script])
    while not pid_file.is_file() or not pid_file.read_text():
        assert runner_process.poll() is None
        time.sleep(0.02)
    child = int(pid_file.read_text())
    runner_process.kill()
    runner_process.wait(timeout=60)
    for _ in range(3000):  # the child ends on its SIGTERM (a guard against a hang, not a timing)
        if not running(child):
            break
        time.sleep(0.02)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the runner's command outlived it")
