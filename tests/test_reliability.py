"""Reliability: NaN caught at its step, rollback, atomic checkpoints under SIGKILL, clean
SIGTERM / SIGINT, exact resume from the middle of an epoch."""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch

from pyrovae import Config, Interrupted, RunFolder, TrainingError, build_model, fit, load_dataset, train
from pyrovae.app.checkpoint import read_checkpoint
from pyrovae.app.cli import main
from pyrovae.data.datasets import Dataset

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"name": "mlp", "hidden": [32]}


def small_config(epochs=3, **train):
    config = Config()
    config.model.encoder = config.model.decoder = SMALL
    config.train.epochs = epochs
    config.train.progress = False
    for k, v in train.items():
        setattr(config.train, k, v)
    return config


def poison(monkeypatch, at_calls, value=float("nan")):
    """Make Dataset.train_points return a poisoned batch on the given (1-based) calls."""
    original, calls = Dataset.train_points, []

    def batch(self, index, *args):
        calls.append(1)
        x = original(self, index, *args)
        return torch.full_like(x, value) if len(calls) in at_calls else x

    monkeypatch.setattr(Dataset, "train_points", batch)
    return calls


@pytest.mark.parametrize("engine, what", [("torch", "loss"), ("pyro", "Normal loc in the forward pass")])
def test_planted_nan_is_caught_at_its_step(tmp_path, monkeypatch, engine, what):
    steps_per_epoch = 17  # 1617 training digits in batches of 100
    poison(monkeypatch, {steps_per_epoch + 3})
    with pytest.raises(TrainingError, match=rf"non-finite {what} at epoch 2, "
                                            rf"step {steps_per_epoch + 3} \(batch 3 of 17\).*"
                                            r"last good checkpoint \(epoch 1\) is kept"):
        train(small_config(engine=engine), tmp_path / "run")
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["counters"]["epoch"] == 1 and state["counters"]["step"] == steps_per_epoch
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_non_finite_gradient_is_caught_before_the_step():
    data = load_dataset("digits")
    from pyrovae import VAE

    vae = VAE(data.event_shape, 2, encoder=SMALL, decoder=SMALL)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    hook = vae.decoder.net[0].weight.register_hook(lambda g: g * float("inf"))
    with pytest.raises(TrainingError, match="non-finite gradient at epoch 1, step 1 "):
        fit(vae, data, epochs=1, progress=False)
    hook.remove()
    for k, v in vae.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_rollback_retries_with_a_smaller_learning_rate(tmp_path, monkeypatch, capsys):
    poison(monkeypatch, {17 + 5})  # once, in epoch 2; the retried epoch 2 is clean
    run = train(small_config(on_nan="rollback", rollback_lr_factor=0.25), tmp_path / "run")
    assert "rolled back to epoch 1, learning rate now 0.00025" in capsys.readouterr().err
    state = read_checkpoint(run / "checkpoint.pt")
    assert state["counters"]["epoch"] == 3
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2.5e-4)
    assert [int(line.split('"epoch": ')[1].split(",")[0]) for line in
            (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_rollbacks_are_bounded(tmp_path, monkeypatch):
    poison(monkeypatch, set(range(18, 200)))  # epoch 2 is always poisoned
    with pytest.raises(TrainingError, match="non-finite .* at epoch 2"):
        train(small_config(on_nan="rollback", max_rollbacks=2), tmp_path / "run")


def _interrupt_at(step):
    calls = []

    def stop_signal():
        calls.append(1)
        return signal.SIGTERM if len(calls) == step else None

    return stop_signal


def _where_poll_stops(k, steps=17):
    """The loop polls for a signal before each of an epoch's 17 steps and once after the epoch's
    checkpoint: (words of the message, steps done) for a signal at the k-th poll."""
    epoch, position = divmod(k - 1, steps + 1)
    if position == steps:
        return f"after epoch {epoch + 1}", (epoch + 1) * steps
    return f"at epoch {epoch + 1}", epoch * steps + position


@pytest.mark.parametrize("interrupt_step", [1, 9, 17, 18, 19, 40])
def test_resume_from_the_middle_of_an_epoch_is_exact(tmp_path, interrupt_step):
    config = small_config(epochs=3, kl_warmup_epochs=2)  # the KL weight must resume too
    config.data.binarize = "dynamic"  # resolved, as train() writes it
    straight = train(config, tmp_path / "straight")

    data = load_dataset("digits")
    pyro.set_rng_seed(0)
    vae = build_model(config.model, data.event_shape)  # what train() builds
    half = tmp_path / "half"
    half.mkdir()
    words, steps_done = _where_poll_stops(interrupt_step)
    with pytest.raises(Interrupted, match=f"interrupted by SIGTERM {words}"):
        fit(vae, data, config.train, config.optim, [RunFolder(half, config)],
            stop_signal=_interrupt_at(interrupt_step))
    (half / "config.toml").write_text((straight / "config.toml").read_text())
    counters = read_checkpoint(half / "checkpoint.pt")["counters"]
    assert counters["epoch"] * 17 + counters["epoch_step"] == steps_done
    train(config, half, resume=True)

    a, b = read_checkpoint(straight / "checkpoint.pt"), read_checkpoint(half / "checkpoint.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    strip = [{k: v for k, v in r.items() if k not in ("train_seconds", "images_per_second")} for r in
             (eval(line.replace("null", "None")) for line in (straight / "metrics.jsonl").read_text().splitlines())]
    again = [{k: v for k, v in r.items() if k not in ("train_seconds", "images_per_second")} for r in
             (eval(line.replace("null", "None")) for line in (half / "metrics.jsonl").read_text().splitlines())]
    assert strip == again


def _spawn(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "pyrovae", "train", "-q", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=600):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_save_a_checkpoint_and_exit_cleanly(tmp_path, sig):
    out = tmp_path / "run"
    proc = _spawn(tmp_path, "--out", str(out), "--set", "train.epochs=100000")
    _wait_for(out / "checkpoint.pt", proc)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + sig, err
    assert re.search(f"interrupted by {sig.name} (at|after) epoch", err), err
    assert "--resume" in err and "Traceback" not in err
    state = read_checkpoint(out / "checkpoint.pt")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert state["counters"]["epoch"] == len(lines)


def test_sigkill_never_leaves_an_unloadable_checkpoint(tmp_path):
    """One kill at a random moment (tests/test_runfolder.py kills a run and its resume and resumes again, too)."""
    out = tmp_path / "run"
    proc = _spawn(tmp_path, "--out", str(out), "--set", "train.epochs=100000")
    _wait_for(out / "config.toml", proc)
    time.sleep(random.Random(0).uniform(0.0, 1.5))
    proc.kill()
    proc.communicate()
    if (out / "checkpoint.pt").exists():
        state = read_checkpoint(out / "checkpoint.pt")
        assert state["counters"]["epoch"] >= 1
    # a torn temporary file may stay behind, hidden, never under the checkpoint's name
    assert all(p.name.startswith(".") for p in out.iterdir() if p.name.endswith(".tmp"))


def test_the_counters_are_typed_once_and_read_by_key_as_a_dict_was():
    from pyrovae.training.records import COUNTERS, Counters

    counters = Counters()
    counters.update({"epoch": 3}, epoch_step=2)
    assert counters.epoch == counters["epoch"] == 3 and counters["epoch_step"] == 2
    assert list(counters.as_dict()) == list(COUNTERS) and COUNTERS["epoch_loss"] is float
    with pytest.raises(KeyError):
        counters["epochs"] = 1


def test_the_records_own_their_checks_and_a_half_done_epoch_with_a_positive_elbo_is_readable():
    """A Gaussian likelihood's ELBO can be positive, so a half-done epoch's running loss can be
    negative: the checkpoint holding it is pyrovae's own (it was refused as foreign before)."""
    from pyrovae.training.records import RECORD_KEYS, Counters, EpochRecord, TrainingState, epoch_record

    counters = Counters(epoch=2, epoch_step=3, epoch_loss=-1234.5, epoch_elbo=-1200.0).as_dict()
    assert Counters.problem(counters) is None
    assert "epoch" in Counters.problem({**counters, "epoch": -1})
    assert "epoch_loss" in Counters.problem({**counters, "epoch_loss": float("nan")})
    assert Counters.problem({**counters, "extra": 1}) is not None
    record = epoch_record(epoch=1, train_elbo=-90.5)
    assert tuple(record) == RECORD_KEYS and EpochRecord.problem(record) is None
    assert EpochRecord.problem({"epoch": 1, "kl_weight": 0.5}) is None  # an earlier name
    assert EpochRecord.current({"epoch": 1, "kl_weight": 0.5}) == {"epoch": 1, "beta": 0.5}
    assert EpochRecord.problem({"epoch": 1, "os": "rm"}) is not None
    assert EpochRecord.problem({"epoch": 1, "test_elbo": "x"}) is not None
    state = TrainingState.of({"model": {}, "optimizer": {}, "rng": {}, "counters": counters})  # an older one
    assert state.algorithm == {} and list(state.as_dict())[:4] == ["model", "optimizer", "rng", "counters"]


def test_a_run_interrupted_mid_epoch_with_a_positive_elbo_resumes(tmp_path):
    """The checkpoint of a half-done epoch whose running ELBO sum is positive (its loss negative,
    as a Gaussian likelihood's can be) is read and resumed."""
    run = tmp_path / "run"
    args = ["train", "--out", str(run), "--set", "train.batch_size=50", "--set", "train.max_steps=2",
            "--set", "train.epochs=2", "-q"]
    assert main(args) == 0
    state = read_checkpoint(run / "checkpoint.pt")
    assert state["counters"]["epoch_step"] == 2
    state["counters"].update(epoch_loss=-abs(state["counters"]["epoch_loss"]), epoch_elbo=-1.0)
    torch.save(state, run / "checkpoint.pt")
    assert read_checkpoint(run / "checkpoint.pt")["counters"]["epoch_loss"] < 0
    assert main(["train", "--out", str(run), "--resume", "--set", "train.max_steps=0", "-q"]) == 0
    assert read_checkpoint(run / "checkpoint.pt")["counters"]["epoch"] == 2


def test_a_tests_children_lead_their_own_group_which_ends_with_everything_in_it():
    """conftest: a child of a test (and its own child, as torchrun's workers) is killed with its
    process group when the test ends, fails or times out, or when the runner is stopped."""
    from conftest import CHILD_GROUPS, end_groups

    proc = subprocess.Popen(["bash", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    grandchild = int(proc.stdout.readline())
    assert os.getpgid(proc.pid) == proc.pid == os.getpgid(grandchild) and proc.pid in CHILD_GROUPS
    end_groups({proc.pid})
    assert proc.wait(timeout=600) == -signal.SIGKILL
    proc.stdout.close()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the grandchild outlived its group")


def test_once_everything_is_saved_a_signal_stops_at_once():
    """After the last checkpoint (the figures remain) SIGTERM stops the process at once; before, the
    first signal is a flag the loop polls (it saves the step), and a second stops at once."""
    from pyrovae.app.run import StoppedAtOnce, _stop_on_signals

    saved = []
    with _stop_on_signals(at_once=lambda: bool(saved)) as stop_signal:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop_signal() == signal.SIGTERM  # a flag: the loop saves, then stops
        with pytest.raises(StoppedAtOnce):
            os.kill(os.getpid(), signal.SIGTERM)
    with _stop_on_signals(at_once=lambda: bool(saved)) as stop_signal:
        saved.append(True)
        with pytest.raises(StoppedAtOnce):
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_run_folder_has_work_to_save_only_between_its_first_step_and_its_last_checkpoint(tmp_path):
    from pyrovae.app.config_files import load_config
    from pyrovae.training.callbacks import Callback

    config = load_config(None, ["train.epochs=2", "train.progress=false"])
    folder = RunFolder(tmp_path / "run", config)
    (tmp_path / "run").mkdir()
    seen = []

    class Watch(Callback):
        def on_epoch_end(self, trainer, record):
            seen.append(folder.nothing_to_save)

    assert folder.nothing_to_save  # the checks and the data's hash: a signal stops at once
    data = load_dataset("digits")
    fit(build_model(config.model, data.event_shape), data, config.train, config.optim, [folder, Watch()])
    assert seen == [False, False] and folder.nothing_to_save  # after the last checkpoint: the figures remain


def test_a_signal_during_the_epochs_evaluation_cuts_it_short_and_saves_the_epoch(tmp_path, monkeypatch):
    """A stop never waits for an evaluation: SIGTERM during epoch 1's evaluation ends it there, the
    epoch is saved without its test numbers, and the run resumes to the end."""
    import pyrovae.training.loop as loop
    from pyrovae.app.config_files import load_config

    evaluate = loop.held_out_numbers
    calls = []

    def signalled(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives inside the evaluation
            time.sleep(30)  # an evaluation far longer than a step: cut short, never waited for
            raise AssertionError("the evaluation was not cut short")
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "held_out_numbers", signalled)
    config = load_config(None, ["train.epochs=3", "train.eval_every=1", "train.progress=false"])
    start = time.monotonic()
    with pytest.raises(Interrupted, match="after epoch 1") as stopped:
        train(config, tmp_path / "run")
    assert stopped.value.signal_number == signal.SIGTERM and time.monotonic() - start < 30
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["counters"]["epoch"] == 1 and state["metrics"][0]["test_elbo"] is None
    train(config, tmp_path / "run", resume=True)
    metrics = read_checkpoint(tmp_path / "run" / "checkpoint.pt")["metrics"]
    assert [r["epoch"] for r in metrics] == [1, 2, 3] and metrics[-1]["test_elbo"] is not None
