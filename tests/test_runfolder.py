"""Run folders that cannot be turned against their user, nor corrupted: loading never runs code,
one writer per folder, metrics and checkpoint in step, data fingerprints, write failures."""

import errno
import importlib
import io
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_line_error
from test_reliability import poison, small_config

import pyrovae
from pyrovae import RunDirError, load_dataset, train
from pyrovae.app.checkpoint import FORMAT, read_checkpoint
from pyrovae.app.cli import main
from pyrovae.app.convert import convert_checkpoint
from pyrovae.app.files import RunLock, create_run_dir, is_fresh

ROOT = Path(__file__).resolve().parents[1]


def epochs_in_raw(run):
    return (run / "metrics.jsonl").read_text().splitlines()


def epochs_in(run):
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- 1. loading never executes code ------------------------------------------------------------
def test_a_checkpoint_holds_only_tensors_and_plain_containers(trained):
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert state["format"] == FORMAT

    def leaves(obj):
        if isinstance(obj, dict):
            assert all(isinstance(k, (str, int)) for k in obj)
            return [x for v in obj.values() for x in leaves(v)]
        if isinstance(obj, (list, tuple)):
            return [x for v in obj for x in leaves(v)]
        return [obj]

    kinds = {type(x) for x in leaves(state)}
    assert kinds <= {torch.Tensor, torch.nn.Parameter, int, float, str, bool, type(None)}, kinds
    assert [r["epoch"] for r in state["metrics"]] == [1, 2]
    assert state["data"]["train_shape"] == [1617, 1, 8, 8]


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(run, marker, how):
    path = run / "checkpoint.pt"
    if how == "appended":  # a real checkpoint with one more entry that carries the payload
        state = torch.load(path, weights_only=True)
        state["extra"] = Payload(marker)
        torch.save(state, path)
    elif how == "whole":
        torch.save({"format": FORMAT, "model": Payload(marker)}, path)
    else:  # a plain pickle file, torch's legacy format
        path.write_bytes(pickle.dumps({"format": FORMAT, "x": Payload(marker)}))


@pytest.mark.parametrize("how", ["appended", "whole", "legacy"])
def test_a_pickle_payload_in_a_run_folder_never_runs(run_copy, tmp_path, capsys, how):
    marker = tmp_path / "PWNED"
    plant(run_copy, marker, how)
    for argv in (["evaluate", str(run_copy), "--nll-samples", "5"],
                 ["sample", str(run_copy), "--out", str(tmp_path / "s.png")],
                 ["train", "--out", str(run_copy), "--resume", "--set", "train.epochs=3"]):
        err = one_line_error(capsys, main(argv))
        assert "checkpoint.pt" in err and ("refused" in err or "not a" in err), err
    with pytest.raises(RunDirError, match="refused|not a"):
        pyrovae.load(run_copy)
    assert not marker.exists()
    assert not (run_copy / "evaluation.json").exists() and not (tmp_path / "s.png").exists()


def to_old_format(run):
    """Rewrite a run's checkpoint as pyrovae's format 1 wrote it (NumPy's RNG state as an array)."""
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    n, p = state["rng"]["numpy"], state["rng"]["python"]
    state["rng"]["numpy"] = (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"])
    state["rng"]["python"] = (p["version"], tuple(p["state"].tolist()), p["gauss_next"])
    for key in ("data", "metrics"):
        del state[key]
    del state["counters"]["rollbacks"]
    state["format"] = "pyrovae-checkpoint-1"
    torch.save(state, run / "checkpoint.pt")


def test_an_older_checkpoint_is_refused_then_converted_when_trusted(run_copy, trained, capsys):
    to_old_format(run_copy)
    err = one_line_error(capsys, main(["sample", str(run_copy), "--out", str(run_copy / "s.png")]))
    assert "pyrovae convert-checkpoint RUN_DIR --trust" in err
    err = one_line_error(capsys, main(["convert-checkpoint", str(run_copy)]))
    assert "runs any code" in err and "--trust" in err
    assert main(["convert-checkpoint", str(run_copy), "--trust"]) == 0
    a, b = read_checkpoint(run_copy / "checkpoint.pt"), read_checkpoint(trained / "checkpoint.pt")
    for key in ("counters", "data", "metrics", "config", "event_shape"):
        assert a[key] == b[key], key
    for generator in ("torch", "noise"):
        assert torch.equal(a["rng"][generator], b["rng"][generator])
    for generator in ("numpy", "python"):
        for key, value in b["rng"][generator].items():
            mine = a["rng"][generator][key]
            assert torch.equal(mine, value) if isinstance(value, torch.Tensor) else mine == value
    assert main(["convert-checkpoint", str(run_copy), "--trust"]) == 2  # nothing left to convert
    assert "already in the current format" in capsys.readouterr().err


def test_an_older_checkpoint_resumes_bit_for_bit_after_conversion(run_copy, tmp_path):
    to_old_format(run_copy)
    convert_checkpoint(run_copy)
    train(small_config(epochs=3), run_copy, resume=True)
    straight = train(small_config(epochs=3), tmp_path / "straight")
    a, b = read_checkpoint(run_copy / "checkpoint.pt"), read_checkpoint(straight / "checkpoint.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    assert epochs_in(run_copy) == [1, 2, 3]


@pytest.mark.parametrize("damage, pattern", [
    (lambda s: s.pop("optimizer"), "no 'optimizer'"),
    (lambda s: s["counters"].pop("epoch"), "'counters' is not what pyrovae writes"),
    (lambda s: s["model"].update({"encoder.net.0.weight": torch.zeros(3, 3)}), "has shape (3, 3)"),
    (lambda s: s["model"].pop("decoder.net.0.bias"), "lacks parameters"),
    (lambda s: s["model"].update({"bogus": torch.zeros(1)}), "has unknown parameters"),
    (lambda s: s["model"].update({"decoder.net.0.bias": torch.zeros(32).to_sparse()}), "sparse"),
    (lambda s: s["rng"].update({"torch": torch.empty(5000, dtype=torch.uint8, device="meta")}), "meta"),
    (lambda s: s.update({"event_shape": [10**12]}), "'event_shape'"),
    (lambda s: s["metrics"].pop(), "metrics records for 2 epochs"),
    (lambda s: s.update({"config": {"model": {"latent_dim": "two"}}}), "config.toml differ in data."),
])
def test_misshapen_checkpoints_are_one_line(run_copy, tmp_path, capsys, damage, pattern):
    state = torch.load(run_copy / "checkpoint.pt", weights_only=True)
    damage(state)
    torch.save(state, run_copy / "checkpoint.pt")
    for argv in (["sample", str(run_copy), "--out", str(tmp_path / "s.png")],
                 ["evaluate", str(run_copy), "--nll-samples", "5"]):
        one_line_error(capsys, main(argv), pattern)
    with pytest.raises(RunDirError):
        pyrovae.load(run_copy)
    one_line_error(capsys, main(["train", "--out", str(run_copy), "--resume", "--set", "train.epochs=3"]))


@pytest.mark.parametrize("damage, pattern", [
    (lambda s: s["optimizer"]["state"][0].update({"exp_avg": torch.zeros(7)}), "slot 'exp_avg' of parameter 0"),
    (lambda s: s["optimizer"]["param_groups"][0]["params"].pop(), "ValueError"),
    (lambda s: s["rng"].update({"torch": torch.zeros(10, dtype=torch.uint8)}), "RuntimeError"),
    (lambda s: s["rng"]["python"].update({"state": torch.full((625,), 2**40)}), "ValueError"),
    (lambda s: s["rng"]["python"].update({"state": torch.full((625,), -1)}), "OverflowError"),
])
def test_a_training_state_that_does_not_fit_is_one_line_on_resume(run_copy, capsys, damage, pattern):
    state = torch.load(run_copy / "checkpoint.pt", weights_only=True)
    damage(state)
    torch.save(state, run_copy / "checkpoint.pt")
    one_line_error(capsys, main(["train", "--out", str(run_copy), "--resume", "--set", "train.epochs=3"]), pattern)
    assert epochs_in(run_copy) == [1, 2]


def test_load_on_cuda_without_cuda_is_a_pyrovae_error(trained):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(pyrovae.ConfigError, match="device = 'cuda': CUDA is not available"):
        pyrovae.load(trained, device="cuda")
    with pytest.raises(pyrovae.ConfigError, match="valid: cpu, cuda, cuda:N"):
        pyrovae.load(trained, device="tpu")


# -- 2. one writer per run folder --------------------------------------------------------------
def test_default_run_folders_are_unique_when_created_together(tmp_path):
    made = []
    threads = [threading.Thread(target=lambda: made.append(create_run_dir(default=str(tmp_path / "runs" / "x"))))
               for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 12 and all(p.is_dir() for p in made)
    assert sorted(p.name for p in made)[:3] == ["x", "x-10", "x-11"]


def test_a_second_writer_is_refused_in_one_line(run_copy, capsys):
    with RunLock(run_copy):
        one_line_error(capsys, main(["train", "--out", str(run_copy), "--resume", "--set", "train.epochs=3"]),
                       f"another pyrovae process (pid {os.getpid()}) is writing this run folder")
        one_line_error(capsys, main(["evaluate", str(run_copy), "--nll-samples", "5"]), "another pyrovae process")
    assert epochs_in(run_copy) == [1, 2]
    assert main(["train", "--out", str(run_copy), "--resume", "--set", "train.epochs=3", "-q"]) == 0


def _spawn(cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pyrovae", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_writers_started_together(tmp_path):
    """Two trainings into one --out: one runs, the other is refused; two without --out, started in the
    same second: two folders."""
    small = ["--set", "model.encoder.hidden=[32]", "--set", "model.decoder.hidden=[32]"]
    same = [_spawn(tmp_path, "train", "-q", "--out", "same", "--set", "train.epochs=10", *small) for _ in range(2)]
    seeds = [_spawn(tmp_path, "train", "-q", "--set", "train.epochs=1", "--set", f"train.seed={s}", *small)
             for s in range(2)]
    results = [(p.wait(timeout=600), p.communicate()) for p in same + seeds]
    codes = sorted(code for code, _ in results[:2])
    assert codes == [0, 2], results[:2]
    refused = next(err for code, (_, err) in results[:2] if code == 2)
    assert refused.count("\n") == 1 and "same" in refused and ("another pyrovae process" in refused
                                                                or "already exists" in refused)
    assert epochs_in(tmp_path / "same") == list(range(1, 11))
    assert all(code == 0 for code, _ in results[2:]), results[2:]
    folders = [p for p in (tmp_path / "runs").iterdir()]
    assert len(folders) == 2
    assert sorted(json.loads((f / "metrics.jsonl").read_text().splitlines()[0])["epoch"] for f in folders) == [1, 1]
    seeds_used = {(f / "config.toml").read_text().split("seed = ")[1].split("\n")[0] for f in folders}
    assert seeds_used == {"0", "1"}


# -- 3. metrics and checkpoint in step ---------------------------------------------------------
def test_a_kill_between_checkpoint_and_metrics_line_is_repaired_by_resume(tmp_path, monkeypatch):
    train_module = importlib.import_module("pyrovae.app.runfolder")

    original, calls = train_module.append_metrics, []

    def dies_at_epoch_2(run_dir, record, kept=""):
        calls.append(record["epoch"])
        if record["epoch"] == 2:
            raise SystemExit("killed")  # the checkpoint of epoch 2 is written, its metrics line is not
        original(run_dir, record, kept)

    monkeypatch.setattr(train_module, "append_metrics", dies_at_epoch_2)
    with pytest.raises(SystemExit):
        train(small_config(epochs=4), tmp_path / "run")
    monkeypatch.undo()
    run = tmp_path / "run"
    assert read_checkpoint(run / "checkpoint.pt")["counters"]["epoch"] == 2 and epochs_in(run) == [1]
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "torn')  # and a torn line, as a full disk leaves it
    train(small_config(epochs=4), run, resume=True)
    assert epochs_in(run) == [1, 2, 3, 4]


def test_kills_at_random_moments_never_duplicate_or_lose_an_epoch(tmp_path):
    rng = random.Random(1)
    run = tmp_path / "run"
    target = 20
    for trial in range(2):  # a kill of the first run, then one of its resume
        args = ["train", "-q", "--out", "run", "--set", f"train.epochs={target}", "--set", "train.eval_every=3"]
        resuming = (run / "config.toml").exists()
        proc = _spawn(tmp_path, *(args + (["--resume"] if resuming else [])))
        start = read_checkpoint(run / "checkpoint.pt")["counters"]["epoch"] if resuming else 0
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline and not (
                (run / "metrics.jsonl").exists() and len(epochs_in_raw(run)) > start):
            time.sleep(0.02)  # the run is under way
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.communicate()
        assert all(not p.name.endswith(".tmp") or p.name.startswith(".") for p in run.iterdir())
    proc = _spawn(tmp_path, "train", "-q", "--out", "run", "--resume", "--set", f"train.epochs={target}")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert epochs_in(run) == list(range(1, target + 1))
    assert [r["epoch"] for r in read_checkpoint(run / "checkpoint.pt")["metrics"]] == list(range(1, target + 1))
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]  # the resume removed stale temporaries


def test_a_folder_with_a_config_but_no_checkpoint_resumes_from_the_start(tmp_path, trained):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text((trained / "config.toml").read_text())
    (run / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # killed mid-write
    assert main(["train", "--out", str(run), "--resume", "-q"]) == 0
    assert not (run / ".checkpoint.pt.abc123.tmp").exists()
    a, b = read_checkpoint(run / "checkpoint.pt"), read_checkpoint(trained / "checkpoint.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


def test_a_folder_with_only_a_lock_and_temporaries_counts_as_empty(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("123\n")
    (run / ".config.toml.x.tmp").write_text("")
    assert is_fresh(run)
    assert main(["train", "--out", str(run), "-q", "--set", "train.epochs=1"]) == 0


def test_a_full_disk_is_one_line_and_keeps_the_last_good_state(small_disk, monkeypatch, capsys):
    """A real file system fills up during epoch 3's checkpoint: the kernel's ENOSPC is the promised line."""
    from conftest import fill_disk

    from pyrovae.app.runfolder import RunFolder

    original, calls, filler = RunFolder.save, [], []

    def save(self, trainer, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            filler.append(fill_disk(small_disk))
        return original(self, trainer, **kwargs)

    monkeypatch.setattr(RunFolder, "save", save)
    run = small_disk / "run"
    err = one_line_error(capsys, main(["train", "--out", str(run), "-q", "--set", "train.epochs=5",
                                       "--set", "model.encoder.hidden=[32]"]))
    assert "checkpoint.pt: cannot write (No space left on device); the last good checkpoint (epoch 2) is kept" in err
    monkeypatch.undo()
    filler[0].unlink()
    assert read_checkpoint(run / "checkpoint.pt")["counters"]["epoch"] == 2 and epochs_in(run) == [1, 2]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert main(["train", "--out", str(run), "--resume", "-q"]) == 0
    assert epochs_in(run) == [1, 2, 3, 4, 5]


def test_an_unwritable_metrics_file_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    config = small_config(epochs=2)
    from pyrovae.training.loop import fit

    run.mkdir()
    (run / "metrics.jsonl").mkdir()  # cannot be opened for writing
    data = load_dataset("digits")
    vae = pyrovae.build_model(config.model, data.event_shape)
    with pytest.raises(RunDirError, match=r"metrics.jsonl: cannot write \(.*\); the last good checkpoint \(epoch 1\)"):
        fit(vae, data, config.train, config.optim, [pyrovae.RunFolder(run, config)])


def test_evaluate_checks_its_output_before_the_work_and_prints_before_writing(run_copy, tmp_path, monkeypatch,
                                                                                capsys):
    evaluate_module = importlib.import_module("pyrovae.app.run")
    import pyrovae.app.files as runfolder

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as m:  # a read-only run folder: refused before any work
        m.setattr(runfolder.tempfile, "mkstemp", read_only)
        m.setattr(evaluate_module, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking the output"))
        one_line_error(capsys, main(["evaluate", str(run_copy), "--nll-samples", "5"]), "Read-only file system")
    assert main(["evaluate", str(run_copy), "--nll-samples", "5", "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["nll_samples"] == 5

    def fails(path, write, what=""):  # the write fails after the work: the numbers are on stdout already
        raise RunDirError(f"{path}: cannot write (No space left on device){what}")

    monkeypatch.setattr(evaluate_module, "atomic_write_bytes", fails)
    code = main(["evaluate", str(run_copy), "--nll-samples", "5"])
    out, err = capsys.readouterr()
    assert code == 2 and '"test_nll"' in out and "the numbers above are the result" in err


def test_planted_symbolic_links_are_replaced_not_written_through(run_copy, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("samples.png", "metrics.jsonl", "evaluation.json"):
        (run_copy / name).unlink(missing_ok=True)
        (run_copy / name).symlink_to(victim)
    assert main(["train", "--out", str(run_copy), "--resume", "-q", "--set", "train.epochs=3"]) == 0
    assert main(["evaluate", str(run_copy), "--nll-samples", "5"]) == 0
    assert victim.read_text() == "precious"
    assert not any((run_copy / n).is_symlink() for n in ("samples.png", "metrics.jsonl", "evaluation.json"))


# -- 4. rollback compounds ---------------------------------------------------------------------
def test_each_rollback_compounds_the_learning_rate_factor(tmp_path, monkeypatch, capsys):


    poison(monkeypatch, {17 + 3, 2 * 17 + 3, 4 * 17 + 3})  # epoch 2 fails twice, then epoch 3 once
    run = train(small_config(epochs=3, on_nan="rollback", rollback_lr_factor=0.5, max_rollbacks=3),
                tmp_path / "run")
    err = capsys.readouterr().err
    assert [line.split("learning rate now ")[1].split(" ")[0] for line in err.splitlines()
            if "rolled back" in line] == ["0.0005", "0.00025", "0.000125"]
    state = read_checkpoint(run / "checkpoint.pt")
    assert state["counters"]["rollbacks"] == 3
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5**3)


# -- 5. data fingerprint -----------------------------------------------------------------------
def test_resume_and_evaluate_refuse_changed_data(tmp_path, capsys):
    x = np.random.default_rng(0).random((200, 6)).astype(np.float32)
    path = tmp_path / "data.npy"
    np.save(path, x)
    run = tmp_path / "run"
    base = ["--set", "data.name=file", "--set", f"data.path={path}", "--set", "model.likelihood=continuous_bernoulli",
            "-q"]
    assert main(["train", "--out", str(run), "--set", "train.epochs=1", *base]) == 0
    x[3, 2] = 0.5 if x[3, 2] != 0.5 else 0.25  # one value, same shape
    np.save(path, x)
    one_line_error(capsys, main(["train", "--out", str(run), "--resume", "--set", "train.epochs=2", *base]),
                   "same shape (180, 6) but other values")
    one_line_error(capsys, main(["evaluate", str(run), "--nll-samples", "5"]), "data differ")
    np.save(path, x[:150])
    one_line_error(capsys, main(["evaluate", str(run), "--nll-samples", "5"]), "has shape (135, 6)")
    assert epochs_in(run) == [1]


# -- 6. bad input: one line --------------------------------------------------------------------
@pytest.mark.parametrize("text, pattern", [
    ("[model]\nprior = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("[model]\nlatent_dim = 1000000000000000000000000000000\n", "model.latent_dim = 1000000000"),
    ("[model]\nlatent_dim = 1" + "0" * 5000 + "\n", "malformed TOML"),
    ("[train]\nnum_particles = 100000000\n", "train.num_particles = 100000000: this configuration needs about"),
    ("[train]\neval_particles = 1000000000\n", "train.eval_particles = 1000000000"),
    ("[model]\nencoder = { name = 'mlp', hidden = [10000000, 10000000] }\n",
         "(its largest size: model.encoder.hidden[0] = 10000000)"),
    ("[model]\nlatent_dim = 4611686018427387904\n", "model"),
    ('[model]\nprior = "' + "x" * 100000 + '"\n', "unknown prior 'xxx"),
])
def test_hostile_configs_are_one_line_and_create_nothing(tmp_path, capsys, text, pattern):
    path = tmp_path / "c.toml"
    path.write_text(text)
    err = one_line_error(capsys, main(["train", str(path), "--out", str(tmp_path / "run")]), pattern)
    assert len(err) < 600
    assert not (tmp_path / "run").exists()


def test_a_hostile_config_in_a_run_folder_is_one_line(run_copy, capsys):
    (run_copy / "config.toml").write_text("[model]\nprior = " + "{ a = " * 3000 + "1" + " }" * 3000 + "\n")
    one_line_error(capsys, main(["evaluate", str(run_copy)]), "config.toml: malformed TOML")
    one_line_error(capsys, main(["train", "--out", str(run_copy), "--resume"]), "config.toml: malformed TOML")


def test_special_files_as_configs(tmp_path, capsys):
    one_line_error(capsys, main(["train", str(tmp_path), "--out", str(tmp_path / "run")]), "not a regular file")
    os.mkfifo(tmp_path / "fifo.toml")
    one_line_error(capsys, main(["train", str(tmp_path / "fifo.toml"), "--out", str(tmp_path / "run")]),
                   "not a regular file")


def test_data_files_big_endian_converted_sparse_converted_meta_refused(tmp_path, capsys):
    x = (np.random.default_rng(0).random((60, 5)) > 0.5)
    np.save(tmp_path / "big.npy", x.astype(">f8"))
    torch.save(torch.from_numpy(x.astype(np.float32)).to_sparse(), tmp_path / "sparse.pt")
    torch.save(torch.empty(60, 5, device="meta"), tmp_path / "meta.pt")
    for name in ("big.npy", "sparse.pt"):
        argv = ["train", "--out", str(tmp_path / name.replace(".", "_")), "-q", "--set", "data.name=file",
                "--set", f"data.path={tmp_path / name}", "--set", "train.epochs=1", "--set", "train.batch_size=10"]
        assert main(argv) == 0, capsys.readouterr().err
    one_line_error(capsys, main(["train", "--out", str(tmp_path / "m"), "--set", "data.name=file",
                                 "--set", f"data.path={tmp_path / 'meta.pt'}"]), "meta tensor")
    big = pyrovae.load_dataset("file", str(tmp_path / "big.npy"), test_fraction=0.5)
    assert torch.equal(torch.cat([big.train, big.test]).sum(0), torch.from_numpy(x.astype(np.float32)).sum(0))


def test_bad_output_paths_are_one_line(trained, tmp_path, capsys):
    one_line_error(capsys, main(["sample", str(trained), "--out", str(tmp_path / "missing" / "s.png")]),
                   "no such folder")
    (tmp_path / "file").write_text("")
    one_line_error(capsys, main(["train", "--out", str(tmp_path / "file" / "run")]), "cannot create the run folder")
    one_line_error(capsys, main(["evaluate", str(trained), "--out", str(tmp_path / "nope" / "e.json")]),
                   "no such folder")


# -- 7. signals --------------------------------------------------------------------------------
def fit_into_run_folder(tmp_path, config, stop_signal):
    """pyrovae.train's fit, into a fresh run folder, with a given signal poll."""
    data = load_dataset("digits")
    model = pyrovae.build_model(config.model, data.event_shape)
    run = tmp_path / "run"
    run.mkdir()
    pyrovae.fit(model, data, config.train, config.optim, [pyrovae.RunFolder(run, config)], stop_signal)
    return run


def test_a_signal_during_evaluation_stops_after_that_epochs_checkpoint(tmp_path, monkeypatch):
    loop = importlib.import_module("pyrovae.training.loop")
    evaluated = []
    original = loop.Trainer.evaluate
    monkeypatch.setattr(loop.Trainer, "evaluate",
                        lambda self, record: (evaluated.append(1), original(self, record))[1])
    with pytest.raises(pyrovae.Interrupted, match="SIGTERM after epoch 2; checkpoint of epoch 2 saved"):
        fit_into_run_folder(tmp_path, small_config(epochs=4, eval_every=2),
                            lambda: signal.SIGTERM if evaluated else None)
    run = tmp_path / "run"
    assert read_checkpoint(run / "checkpoint.pt")["counters"]["epoch"] == 2 and epochs_in(run) == [1, 2]


def test_a_signal_while_plotting_exits_after_the_last_checkpoint(tmp_path, monkeypatch):
    plots = importlib.import_module("pyrovae.app.plots")
    received = []
    original = plots.plot_run
    monkeypatch.setattr(plots, "plot_run", lambda *a, **k: (received.append(signal.SIGINT), original(*a, **k))[1])
    with pytest.raises(pyrovae.Interrupted, match="SIGINT after the last epoch"):
        fit_into_run_folder(tmp_path, small_config(epochs=2), lambda: received[0] if received else None)
    run = tmp_path / "run"
    assert (run / "samples.png").exists() and epochs_in(run) == [1, 2]


def test_a_second_signal_stops_at_once():
    from pyrovae.app.run import StoppedAtOnce, _stop_on_signals

    with _stop_on_signals() as stop_signal:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop_signal() == signal.SIGINT  # the first one is only noted
        with pytest.raises(StoppedAtOnce):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)


def test_sigterm_during_evaluate_exits_143(trained, tmp_path):
    proc = _spawn(tmp_path, "evaluate", str(trained), "--nll-samples", "100000000", "--out", str(tmp_path / "e.json"))
    time.sleep(8)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err
    assert err.count("\n") == 1 and "stopped at once by SIGTERM" in err
    assert not (tmp_path / "e.json").exists()


# -- 8. threads --------------------------------------------------------------------------------
def test_threads_flag(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["train", "--out", str(tmp_path / "run"), "--threads", "1", "-q", "--set", "train.epochs=1"]) == 0
        assert torch.get_num_threads() == 1
        assert "num_threads = 1" in (tmp_path / "run" / "config.toml").read_text()
    finally:
        torch.set_num_threads(before)
    one_line_error(capsys, main(["train", "--threads", "0", "--out", str(tmp_path / "r2")]), "--threads 0")
    one_line_error(capsys, main(["train", "--set", "train.num_threads=-1", "--out", str(tmp_path / "r2")]),
                   "train.num_threads")


def test_memory_estimate_counts_parameters_exactly(tmp_path):
    from pyrovae import VAE
    from pyrovae.training.memory import check_training_memory, meta_model

    vae = meta_model(lambda: VAE((64,), 2, encoder={"name": "mlp", "hidden": [100]},
                                 decoder={"name": "mlp", "hidden": [100]}))
    params = (64 * 100 + 100 + 100 * 4 + 4) + (2 * 100 + 100 + 100 * 64 + 64)
    assert sum(p.numel() for p in vae.parameters()) == params
    need = check_training_memory(vae, 1, 1, 1, "adam", "cpu", available=1 << 40)
    assert 4 * params * 8 <= need < 4 * params * 8 + 4 * 3 * 2000 * 1000  # params x8 (adam) + activations
    wide = meta_model(lambda: VAE((64,), 2, encoder={"name": "mlp", "hidden": [3000, 3000]}))
    with pytest.raises(pyrovae.ConfigError, match=r"model.encoder: .* more than the 1.0 KiB available"):
        check_training_memory(wide, 1, 1, 1, "adam", "cpu", available=1024)
    with pytest.raises(pyrovae.ConfigError, match="train.batch_size = 100000"):
        check_training_memory(vae, 100000, 1, 1, "adam", "cpu", available=1 << 26)


def test_checkpoint_bytes_alone(tmp_path, trained):
    """A checkpoint from memory: torch.load(weights_only=True) reads what save_checkpoint wrote."""
    state = torch.load(io.BytesIO((trained / "checkpoint.pt").read_bytes()), weights_only=True)
    assert state["counters"]["epoch"] == 2
