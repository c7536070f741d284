"""A family and a prior in a user's own file, named in [plugins]: trained by the CLI, evaluated,
loaded in a fresh process from another folder, resumed bit for bit, run under torchrun."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import pyrovae
from pyrovae.app.checkpoint import read_checkpoint
from pyrovae.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugins" / "two_latents.py"
CONFIG = """[plugins]
modules = ["plugins/two_latents.py"]

[data]
binarize = "threshold"

[model]
family = "two_latents"
prior = { name = "student_t", df = 3.0 }
hidden = 32

[train]
epochs = 2
batch_size = 64
eval_every = 1
progress = false
"""


@pytest.fixture
def project(tmp_path):
    """A config in one folder with its plugin beside it; commands run from another folder."""
    (tmp_path / "cfg" / "plugins").mkdir(parents=True)
    shutil.copy(PLUGIN, tmp_path / "cfg" / "plugins" / "two_latents.py")
    (tmp_path / "cfg" / "run.toml").write_text(CONFIG)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def cli(cwd, *args, launcher=()):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *launcher, "-m", "pyrovae", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_plugin_family_trains_evaluates_loads_resumes(project):
    run = project / "run"
    proc = cli(project / "elsewhere", "train", str(project / "cfg" / "run.toml"), "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (run / "config.toml").read_text()
    assert 'family = "two_latents"' in text and str(project / "cfg" / "plugins" / "two_latents.py") in text
    assert (run / "plugins" / "two_latents.py").read_text() == PLUGIN.read_text()  # a copy, for reading
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[1]["train_elbo"] > metrics[0]["train_elbo"]

    plugin = str(project / "cfg" / "plugins" / "two_latents.py")
    # this process has not run the plugin (training ran in another): only --plugins opens the run
    assert "two_latents" not in pyrovae.MODELS
    assert main(["evaluate", str(run), "--nll-samples", "200", "--iwae-samples", "20", "--plugins", plugin]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert result["test_elbo"] <= result["test_iwae"] + 0.05 and result["test_iwae"] <= -result["test_nll"] + 0.2
    assert result["latent_dim"] == 4  # style and content, two each

    code = ("import pyrovae; m = pyrovae.load({!r}, plugins=[{!r}]); print(type(m).__name__, tuple(m.sample(10).shape))"
            .format(str(run), plugin))
    proc = subprocess.run([sys.executable, "-c", code], cwd=project / "elsewhere", capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 0 and "TwoLatents (10, 1, 8, 8)" in proc.stdout, proc.stderr[-2000:]
    assert main(["sample", str(run), "--out", str(project / "s.png"), "--plugins", plugin]) == 0

    # resumed bit for bit: 2 epochs then 1 more equals 3 straight
    assert main(["train", "--out", str(run), "--resume", "--set", "train.epochs=3", "--plugins", plugin]) == 0
    assert "epochs = 3" in (run / "config.toml").read_text()  # config.toml is the run's config
    config = pyrovae.load_config(str(project / "cfg" / "run.toml"), ["train.epochs=3"])
    straight = pyrovae.train(config, project / "straight")
    a, b = read_checkpoint(run / "checkpoint.pt"), read_checkpoint(straight / "checkpoint.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)


def test_a_plugin_family_under_torchrun_matches_one_process_within_noise(project):
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    config = str(project / "cfg" / "run.toml")
    two = cli(project / "elsewhere", "train", config, "--out", str(project / "two"), launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    with contextlib.chdir(project / "elsewhere"), warnings.catch_warnings():  # one process: this one
        warnings.simplefilter("ignore")  # as in a process of its own: warnings are printed, not errors
        assert main(["train", config, "--out", str(project / "one")]) == 0
    last = [json.loads((project / r / "metrics.jsonl").read_text().splitlines()[-1]) for r in ("two", "one")]
    # the family draws its own noise (through Pyro, per rank): the runs agree within seed noise
    assert abs(last[0]["test_elbo"] - last[1]["test_elbo"]) < 2.0, last
    assert last[0]["samples_seen"] == last[1]["samples_seen"]


def test_plugin_errors_are_one_line(project, capsys):
    config = project / "cfg" / "run.toml"
    (project / "cfg" / "bad.py").write_text("raise RuntimeError('broken plugin')\n")
    for modules, pattern in (('["missing.py"]', "missing.py'?: no such file"),
                             ('["bad.py"]', "cannot import '.*bad.py' \\(RuntimeError: broken plugin\\)"),
                             ('["no_such_module_x"]', "no module named 'no_such_module_x' on the Python path"),
                             ('["a b"]', "neither a module name nor a .py file")):
        config.write_text(CONFIG.replace('["plugins/two_latents.py"]', modules))
        assert main(["train", str(config), "--out", str(project / "run")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        import re

        assert re.search(pattern, err), err
    assert not (project / "run").exists()


def test_a_changed_plugin_file_is_refused_when_the_run_is_opened(project, capsys):
    run = project / "run"
    config = pyrovae.load_config(str(project / "cfg" / "run.toml"), ["train.epochs=1"])
    pyrovae.train(config, run)
    plugin = project / "cfg" / "plugins" / "two_latents.py"
    plugin.write_text(plugin.read_text() + "\n# edited\n")
    assert main(["evaluate", str(run), "--nll-samples", "5", "--plugins", str(plugin)]) == 2
    err = capsys.readouterr().err
    assert "two_latents.py' changed since the run recorded it" in err and err.count("\n") == 1, err


def test_the_write_your_own_snippets_work():
    """The prior, likelihood and network of docs/write-your-own.md, registered and trained by name."""
    import re

    import pyro.distributions as dist
    from torch import nn

    page = (ROOT / "docs" / "write-your-own.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", page, re.S) if ".register(" in b][:3]
    namespace = {"dist": dist, "torch": torch, "pyrovae": pyrovae, "nn": nn}
    for block in blocks:
        exec(compile(block, "write-your-own.md", "exec"), namespace)
    data = pyrovae.load_dataset("digits", binarize="threshold")
    counts = pyrovae.Dataset("counts", (data.train * 3).round(), (data.test * 3).round())
    vae = pyrovae.VAE(counts.event_shape, 2, prior={"name": "student_t", "df": 3.0}, likelihood="geometric",
                      decoder={"name": "wide", "width": 64})
    metrics = pyrovae.fit(vae, counts, epochs=2, progress=False)
    assert metrics[-1]["test_elbo"] is not None and metrics[-1]["train_elbo"] > metrics[0]["train_elbo"] - 1
    with pytest.raises(pyrovae.DataError, match="whole numbers >= 0"):
        vae.check_data(torch.full((1, 1, 8, 8), 0.5))
