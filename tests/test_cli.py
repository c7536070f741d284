"""The command line, end to end on digits, and its one-line errors with exit status 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyrovae.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = {"config.toml", "metrics.jsonl", "checkpoint.pt", "reconstructions.png", "samples.png", "elbo.png",
             "manifold.png"}


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pyrovae", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_train_evaluate_sample_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--out", str(out), "--set", "train.epochs=12", "--set", "train.eval_every=4", "-q",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"run folder: {out}" in proc.stdout
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 12
    for m in metrics:
        assert {"epoch", "step", "samples_seen", "train_elbo", "test_elbo", "train_seconds",
                "images_per_second"} <= set(m)
    tests = [m["test_elbo"] for m in metrics if m["test_elbo"] is not None]
    assert [m["epoch"] for m in metrics if m["test_elbo"] is not None] == [4, 8, 12]
    assert tests[-1] > tests[0]
    assert metrics[-1]["train_elbo"] > metrics[0]["train_elbo"] + 5
    for png in ("reconstructions.png", "samples.png", "elbo.png", "manifold.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["evaluate", str(out), "--particles", "5", "--nll-samples", "200", "--iwae-samples", "20"]) == 0
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["test_elbo"] == pytest.approx(tests[-1], abs=1.5)
    assert evaluation["iwae_samples"] == 20 and evaluation["nll_samples"] == 200
    assert evaluation["test_elbo"] < evaluation["test_iwae"] < 0 < evaluation["test_nll"]
    assert evaluation["test_iwae"] <= -evaluation["test_nll"] + 0.1  # IWAE_20 <= IWAE_200, up to noise
    assert 0 <= evaluation["active_units"] <= 2 == evaluation["latent_dim"] == len(evaluation["kl_per_dim"])

    assert main(["sample", str(out), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0

    # --resume with more epochs continues the same run folder
    assert main(["train", "--out", str(out), "--resume", "--set", "train.epochs=13", "-q"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 13


def test_error_is_one_line_exit_2_and_leaves_no_folder(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochs = -1\n")
    proc = run_cli("train", str(bad), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("pyrovae: error: ") and "bad.toml" in proc.stderr and "train.epochs" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, pattern", [
    (["train", "{tmp}/missing.toml"], "missing.toml: no such config file"),
    (["train", "--set", "model.prior=vamp2"], "unknown prior 'vamp2' \\(did you mean 'vamp'\\?\\); valid:"),
    (["train", "--set", "data.name=file", "--set", "data.path={tmp}/nope.npy"], "nope.npy'?: no such file"),
    (["train", "--set", "train.batch_size=100000"], "larger than the training split"),
    (["train", "--set", "model.likelihood=bernoulli", "--set", "data.binarize=none"], "continuous_bernoulli"),
    (["train", "--set", "model.encoder=conv", "--set", "data.name=file", "--set", "data.path={tmp}/vec.npy"],
     "image data"),
    (["train", "--resume", "--out", "{tmp}/nothing"], "not a pyrovae run folder"),
    (["evaluate", "{tmp}/nothing"], "no checkpoint here|not a pyrovae run folder"),
    (["sample", "{tmp}/nothing", "--out", "{tmp}/x.png"], "no checkpoint here|not a pyrovae run folder"),
    (["sample", "{tmp}/nothing", "--out", "{tmp}/x.jpg"], "must be a .png file"),
])
def test_cli_errors(tmp_path, capsys, argv, pattern):
    import re

    import numpy as np

    np.save(tmp_path / "vec.npy", np.random.rand(40, 5))
    argv = [a.format(tmp=tmp_path) for a in argv]
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyrovae: error: ") and err.count("\n") == 1, err
    assert re.search(pattern, err), err
    assert not (tmp_path / "run").exists()


def test_cuda_requested_without_one(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "--set", "train.device=cuda", "--out", str(tmp_path / "run")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_existing_run_folder_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("precious\n")
    assert main(["train", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == "precious\n"


def test_resume_with_another_model_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "train.epochs=1", "-q"]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert main(["train", "--out", str(out), "--resume", "--set", "model.latent_dim=3"]) == 2
    assert "another model.latent_dim" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == before


def test_truncated_checkpoint_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--set", "train.epochs=1", "-q"]) == 0
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert main(["evaluate", str(out)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err


def test_version_and_help_answer_before_torch_loads():
    """``pyrovae --version`` (and ``--help``) answer from argparse, before torch and Pyro are imported;
    the public API still loads whole at its first use."""
    import subprocess
    import sys

    code = ("import sys\nfrom pyrovae.app.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n"
            "    pass\nprint('torch' in sys.modules, 'pyro' in sys.modules)\nimport pyrovae\n"
            "print(pyrovae.VAE.__name__, sorted(pyrovae.MODELS.names())[:2])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("pyrovae ") and lines[1] == "False False", out.stdout
    assert lines[2] == "VAE ['cvae', 'hvae']", out.stdout


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["encode", "--help"],
                                  ["sample", "--help"], ["convert-checkpoint", "--help"], ["trian"], ["evaluate"],
                                  ["train", "--threads", "x"], ["sample", "run", "-n", "many", "-o", "x.png"]])
def test_help_and_argument_errors_import_no_torch_pyro_or_matplotlib(argv):
    """What argparse answers (help, a typo, a missing or malformed argument) costs no heavy import."""
    import subprocess
    import sys

    code = (f"import sys\nfrom pyrovae.app.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit as e:\n"
            "    print('exit', e.code)\nprint(sorted(m for m in ('torch', 'pyro', 'matplotlib', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    lines = out.stdout.splitlines()
    assert lines[-1] == "[]", (argv, out.stdout)
    assert lines[-2] == ("exit 0" if "--help" in argv else "exit 2"), (argv, out.stdout, out.stderr)


@pytest.mark.parametrize("argv, expected", [
    (["train", "--set", "train.epoch=3"], "--set train.epoch=3: train.epoch: unknown key (did you mean 'epochs'?)"),
    (["train", "--set", "model.prior=mixtur"], "--set model.prior=mixtur: model.prior: unknown prior 'mixtur' "
                                               "(did you mean 'mixture'?)"),
    (["train", "--set", "trian.epochs=3"], "--set trian.epochs=3: [trian]: unknown section (did you mean 'train'?)"),
    (["train", "--set", "train.epochs=2", "--set", "train.batch_size=-1"], "--set train.batch_size=-1: "),
    (["train", "--set", "data.name=mnits"], "(did you mean 'mnist'?)"),
])
def test_a_bad_key_from_set_names_set_and_a_near_miss_gets_did_you_mean(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
