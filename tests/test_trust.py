"""Opening a run folder runs nothing from it: plugins only when the user names them, from the bytes
that were hashed; hostile checkpoints refused before anything is allocated; the run's own files,
its lock and the terminal safe from what a folder holds. Each test is an attack tried for real."""

import importlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import one_line_error

import pyrovae
from pyrovae import RunDirError
from pyrovae.app.cli import main
from pyrovae.app.config import PluginsConfig
from pyrovae.app.files import RunLock
from pyrovae.app.plugins import PluginRecord, read_plugin, run_named_plugins
from pyrovae.app.tomlfile import dumps, parse_toml

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "plugins" / "two_latents.py"
GOOD_PLUGIN = "import pyrovae\n\n@pyrovae.PRIORS.register({name!r})\ndef _prior(latent_dim):\n" \
              "    return pyrovae.PRIORS.build('standard_normal', latent_dim=latent_dim)\n"


@pytest.fixture
def marker_module(tmp_path, monkeypatch):
    """A module on sys.path whose import creates a marker file (as webbrowser or ensurepip act on import)."""
    folder = tmp_path / "site"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    name = f"side_effect_{os.getpid()}_{len(list(tmp_path.iterdir()))}"
    (folder / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(folder))
    yield name, marker, folder / f"{name}.py"
    sys.modules.pop(name, None)


def rewrite(run, config_edit=None, state_edit=None):
    """Edit a run folder's config.toml and/or its checkpoint (as an attacker would)."""
    if config_edit is not None:
        d = parse_toml((run / "config.toml").read_text(), "config")
        config_edit(d)
        (run / "config.toml").write_text(dumps(d))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    if config_edit is not None:
        config_edit(state["config"])
    if state_edit is not None:
        state_edit(state)
    torch.save(state, run / "checkpoint.pt")


def openers(run, tmp_path):
    return (["sample", str(run), "--out", str(tmp_path / "s.png")],
            ["evaluate", str(run), "--nll-samples", "3", "--iwae-samples", "2", "--particles", "1"],
            ["train", "--out", str(run), "--resume", "--set", "train.epochs=3", "-q"])


# -- nothing a run folder names is imported -------------------------------------------------------
def test_a_module_named_only_by_the_checkpoint_never_runs(run_copy, tmp_path, capsys, marker_module):
    name, marker, _ = marker_module
    rewrite(run_copy, state_edit=lambda s: s["config"].update(plugins={"modules": [name], "sha256": []}))
    for argv in openers(run_copy, tmp_path):
        one_line_error(capsys, main(argv), "differ in plugins.")
    with pytest.raises(RunDirError, match="differ in plugins"):
        pyrovae.load(run_copy)
    assert not marker.exists() and name not in sys.modules


def test_a_module_named_by_both_records_with_its_hash_never_runs(run_copy, tmp_path, capsys, marker_module):
    """The attacker can record the right file and hash: the record still runs nothing; only a user's --plugins would."""
    name, marker, file = marker_module
    plugin = read_plugin(name)
    record = {"modules": [name], "files": [str(file)], "sha256": [plugin.sha256]}
    rewrite(run_copy, config_edit=lambda d: d.update(plugins=record))
    assert main(openers(run_copy, tmp_path)[0]) == 0  # a vae run: nothing it needs is missing
    assert main(openers(run_copy, tmp_path)[1]) == 0
    assert isinstance(pyrovae.load(run_copy), pyrovae.VAE)
    assert not marker.exists() and name not in sys.modules


@pytest.mark.parametrize("record, pattern", [
    ({"modules": ["x.py"], "sha256": []}, "each plugin is recorded with its file and hash"),
    ({"modules": ["/a/x.py"], "files": ["/a/x.py"], "sha256": [""]}, "is not a SHA-256"),
    ({"modules": ["x"], "files": ["relative.py"], "sha256": ["0" * 64]}, "is not an absolute path of a .py file"),
    ({"modules": ["x"], "files": ["/a/x.py"], "sha256": ["0" * 64], "extra": []}, "plugins.extra: unknown key"),
])
def test_a_record_without_files_or_hashes_is_refused(run_copy, tmp_path, capsys, record, pattern):
    rewrite(run_copy, config_edit=lambda d: d.update(plugins=record))
    for argv in openers(run_copy, tmp_path):
        one_line_error(capsys, main(argv), pattern)


@pytest.fixture
def plugin_run(tmp_path):
    """A run of the two_latents plugin family, trained from its config folder, its plugin's copy in the folder."""
    (tmp_path / "cfg").mkdir()
    plugin = tmp_path / "cfg" / "two_latents.py"
    shutil.copy(PLUGIN, plugin)
    (tmp_path / "cfg" / "run.toml").write_text(
        '[plugins]\nmodules = ["two_latents.py"]\n[data]\nbinarize = "threshold"\n[model]\nfamily = "two_latents"\n'
        'hidden = 16\n[train]\nepochs = 1\nprogress = false\neval_every = 1\n')
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "cfg" / "run.toml"), "--out", str(run), "-q"]) == 0
    from pyrovae import MODELS
    from pyrovae.app.plugins import _EXECUTED

    MODELS._entries.pop("two_latents")  # as in a fresh process: nothing registered, nothing run
    _EXECUTED.clear()
    return run, plugin


def test_a_run_that_needs_an_unnamed_plugin_says_what_and_how(plugin_run, tmp_path, capsys):
    run, plugin = plugin_run
    digest = read_plugin(str(plugin)).sha256
    for argv, command in zip(openers(run, tmp_path), (f"pyrovae sample {run} --plugins {plugin} --out",
                                                      f"pyrovae evaluate {run} --plugins {plugin}",
                                                      f"pyrovae train --out {run} --resume --plugins {plugin}")):
        err = one_line_error(capsys, main(argv), "the run needs a plugin that was not named: model.family")
        assert "'two_latents'" in err and f"(sha256 {digest})" in err and "runs the file's code" in err, err
        assert command in err, err
    with pytest.raises(pyrovae.PyrovaeError, match="plugins=\\['"):
        pyrovae.load(run)
    assert main(["evaluate", str(run), "--nll-samples", "3", "--plugins", str(plugin)]) == 0
    assert isinstance(pyrovae.load(run, plugins=[str(plugin)]), pyrovae.Model)


def test_the_command_a_message_gives_is_typed_as_the_user_invokes_pyrovae(plugin_run, capsys, monkeypatch):
    run, plugin = plugin_run
    monkeypatch.setenv("PYROVAE_CLI", "./dev pyrovae")
    err = one_line_error(capsys, main(["evaluate", str(run)]), "the run needs a plugin that was not named")
    assert f"code: ./dev pyrovae evaluate {run} --plugins {plugin}" in err, err


def test_plugins_inside_the_run_folder_are_never_run(plugin_run, capsys, monkeypatch):
    run, plugin = plugin_run
    assert (run / "plugins" / "two_latents.py").read_bytes() == plugin.read_bytes()  # the copy, same hash
    monkeypatch.chdir(run)
    monkeypatch.syspath_prepend(str(run))  # as `python -m pyrovae` from inside the folder has it
    for entry in ("plugins/two_latents.py", "plugins.two_latents", str(run / "plugins" / "two_latents.py")):
        one_line_error(capsys, main(["evaluate", ".", "--nll-samples", "3", "--plugins", entry]),
                       "lies inside the run folder")
    # a record that points into the folder itself (an attacker's) is refused the same way
    inner = str(run / "plugins" / "two_latents.py")
    rewrite(run, config_edit=lambda d: d["plugins"].update(files=[inner], modules=[inner]))
    err = one_line_error(capsys, main(["evaluate", str(run), "--nll-samples", "3"]), "inside the run folder itself")
    assert "--plugins YOUR_COPY.py" in err
    from pyrovae import MODELS

    assert "two_latents" not in MODELS


def test_a_config_inside_a_run_folder_is_a_record(run_copy, tmp_path, capsys, marker_module):
    """`pyrovae train RUN/config.toml` runs none of what that config's [plugins] names."""
    name, marker, file = marker_module
    record = {"modules": [name], "files": [str(file)], "sha256": [read_plugin(name).sha256]}
    rewrite(run_copy, config_edit=lambda d: d.update(plugins=record))
    assert main(["train", str(run_copy / "config.toml"), "--out", str(tmp_path / "again"), "-q",
                 "--set", "train.epochs=1"]) == 0
    assert not marker.exists() and name not in sys.modules


def test_a_dotted_module_plugin_is_recorded_with_its_file_and_hash(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "site" / "mypkg"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(f"open({str(tmp_path / 'INIT_RAN')!r}, 'w').close()\n")  # never runs
    (folder / "parts.py").write_text(GOOD_PLUGIN.format(name="dotted_prior"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    config = tmp_path / "c.toml"
    config.write_text('[plugins]\nmodules = ["mypkg.parts"]\n[model]\nprior = "dotted_prior"\n'
                      '[train]\nepochs = 1\nprogress = false\n')
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "-q"]) == 0
    record = parse_toml((run / "config.toml").read_text(), "c")["plugins"]
    assert record["modules"] == ["mypkg.parts"] and record["files"] == [str((folder / "parts.py").resolve())]
    assert record["sha256"] == [read_plugin("mypkg.parts").sha256]
    assert not (tmp_path / "INIT_RAN").exists()  # resolving the name imported no parent package
    assert (run / "plugins" / "parts.py").read_bytes() == (folder / "parts.py").read_bytes()
    pyrovae.PRIORS._entries.pop("dotted_prior")
    importlib.import_module("pyrovae.app.plugins")._EXECUTED.clear()
    assert main(["evaluate", str(run), "--nll-samples", "3", "--plugins", "mypkg.parts"]) == 0
    (folder / "parts.py").write_text(GOOD_PLUGIN.format(name="dotted_prior") + "# edited\n")
    one_line_error(capsys, main(["evaluate", str(run), "--nll-samples", "3", "--plugins", "mypkg.parts"]),
                   "parts.py' changed since the run recorded it")
    one_line_error(capsys, main(["evaluate", str(run), "--plugins", "json.decoder"]), "is not one of the run's plugins")
    one_line_error(capsys, main(["evaluate", str(run), "--plugins", "math"]), "has no Python source file")


# -- a plugin runs from the bytes that were hashed, and no others ---------------------------------------
def test_a_file_swapped_between_hash_and_run_never_runs(tmp_path):
    """A thread swaps the plugin's file between good bytes (recorded) and hostile bytes while it is
    opened again and again: only the good bytes ever run (the file is read once)."""
    marker = tmp_path / "PWNED"
    good, evil = GOOD_PLUGIN.format(name="race_prior").encode(), f"open({str(marker)!r}, 'w').close()\n".encode()
    path = tmp_path / "plugin.py"
    path.write_bytes(good)
    record = PluginRecord((str(path),), (str(path),), (read_plugin(str(path)).sha256,))
    for name, data in (("g", good), ("e", evil)):
        (tmp_path / name).write_bytes(data)
    stop, swaps = threading.Event(), [0]

    def swapper():
        while not stop.is_set():
            for name in ("g", "e"):
                shutil.copy(tmp_path / name, tmp_path / f"{name}.next")
                os.replace(tmp_path / f"{name}.next", path)
                swaps[0] += 1

    from pyrovae.app.plugins import _EXECUTED

    thread = threading.Thread(target=swapper)
    thread.start()
    outcomes = {"ran": 0, "refused": 0}
    try:
        deadline = time.monotonic() + 600  # a guard against a hang: the work counts, not the time it takes
        while (outcomes["ran"] + outcomes["refused"] <= 50 or swaps[0] <= 50) and time.monotonic() < deadline:
            _EXECUTED.clear()
            try:
                run_named_plugins([str(path)], record)
                outcomes["ran"] += 1
            except pyrovae.ConfigError as e:
                assert "changed since the run recorded it" in str(e) or "cannot read" in str(e), e
                outcomes["refused"] += 1
    finally:
        stop.set()
        thread.join()
    assert not marker.exists(), outcomes
    assert outcomes["ran"] + outcomes["refused"] > 50 and swaps[0] > 50, (outcomes, swaps)


def test_a_poisoned_pyc_never_runs_instead_of_the_source(tmp_path, monkeypatch):
    from importlib._bootstrap_external import _code_to_timestamp_pyc

    marker = tmp_path / "PWNED"
    site = tmp_path / "site"
    site.mkdir()
    name = f"pyc_target_{os.getpid()}"
    source = site / f"{name}.py"
    source.write_text(GOOD_PLUGIN.format(name="pyc_prior"))
    code = compile(f"open({str(marker)!r}, 'w').close()\n", str(source), "exec")
    stat = source.stat()
    cache = Path(importlib.util.cache_from_source(str(source)))
    cache.parent.mkdir()
    cache.write_bytes(_code_to_timestamp_pyc(code, stat.st_mtime, stat.st_size))  # stamped as the source
    monkeypatch.syspath_prepend(str(site))
    record = PluginRecord((name,), (str(source),), (read_plugin(name).sha256,))
    run_named_plugins([name], record)
    assert not marker.exists() and "pyc_prior" in pyrovae.PRIORS
    sys.modules.pop(name, None)
    importlib.import_module(name)  # Python's own import takes the poisoned .pyc: the attack is real
    assert marker.exists()
    sys.modules.pop(name, None)


def test_a_plugin_that_raises_or_exits_is_one_line(tmp_path):
    for body, pattern in (("raise SystemExit(3)", "SystemExit"), ("1/0", "ZeroDivisionError"),
                          ("def f(:\n", "SyntaxError")):
        path = tmp_path / f"p{len(body)}.py"
        path.write_text(body)
        record = PluginRecord((str(path),), (str(path),), (read_plugin(str(path)).sha256,))
        with pytest.raises(pyrovae.ConfigError, match=pattern):
            run_named_plugins([str(path)], record)


# -- hostile checkpoints: checked before anything is allocated or run -----------------------------------
@pytest.mark.parametrize("damage, pattern", [
    (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(1).expand(s["model"][next(iter(s["model"]))]
                                                                                .shape)),
     "a stride-0 or overlapping tensor"),
    (lambda s: s["model"].update({k: torch.zeros(10**5)[: v.numel()].view(v.shape) for k, v in s["model"].items()}),
     "has a storage of 400000 bytes"),
    (lambda s: s["model"].update({k: v.t() for k, v in s["model"].items() if v.dim() == 2}), "has strides"),
    (lambda s: s.update(extra=torch.zeros(16)), "unknown key 'extra'"),
    (lambda s: s["model"].update({k: torch.full_like(v, float("nan")) for k, v in s["model"].items()}),
     "holds non-finite values"),
    (lambda s: s["model"].update({k: v.double() for k, v in s["model"].items()}), "is torch.float64"),
    (lambda s: s["counters"].update(epoch=10**12), "2 metrics records for 1000000000000 epochs"),
    (lambda s: s["counters"].update(step=10**20), "'counters' is not what pyrovae writes"),
    (lambda s: s["counters"].update(step=10**9), "counters.step = 1000000000"),
    (lambda s: s["counters"].update(epoch_step=10**6), "counters.epoch_step = 1000000"),
    (lambda s: s["counters"].update(rollbacks=99), "counters.rollbacks = 99"),
    (lambda s: s["metrics"].__setitem__(0, {**s["metrics"][0], "epoch": 7}), "numbered from 1"),
    (lambda s: s["metrics"].__setitem__(0, {**s["metrics"][0], "note": "x" * 10}), "'metrics' is not"),
    (lambda s: s["rng"].update(extra=torch.zeros(2, dtype=torch.uint8)), "'rng' is not"),
])
def test_hostile_checkpoints_are_refused_in_one_line(run_copy, tmp_path, capsys, damage, pattern):
    before = (run_copy / "metrics.jsonl").read_bytes()
    rewrite(run_copy, state_edit=damage)
    for argv in openers(run_copy, tmp_path):
        one_line_error(capsys, main(argv), pattern)
    with pytest.raises(pyrovae.PyrovaeError):
        pyrovae.load(run_copy)
    assert (run_copy / "metrics.jsonl").read_bytes() == before


def test_a_compressed_checkpoint_is_refused_unread(run_copy, tmp_path, capsys, monkeypatch):
    """A deflated entry could expand far past the file (2 GB of zeros in 2 MB): refused before torch.load."""
    state = torch.load(run_copy / "checkpoint.pt", weights_only=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(run_copy / "checkpoint.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(1))
    for argv in openers(run_copy, tmp_path):
        one_line_error(capsys, main(argv), "is compressed; torch.save writes every entry uncompressed")
    assert not loads


def test_huge_sizes_in_a_run_config_are_refused_at_once(run_copy, tmp_path, capsys):
    def huge_flow(d):
        d["model"]["prior"] = {"name": "flow", "num_flows": 10**9, "hidden": [8]}

    rewrite(run_copy, config_edit=huge_flow)
    for argv in openers(run_copy, tmp_path):
        start = time.monotonic()
        one_line_error(capsys, main(argv), "model.prior.num_flows = 1000000000")
        assert time.monotonic() - start < 30
    start = time.monotonic()
    one_line_error(capsys, main(["train", "--out", str(tmp_path / "new"), "--set", "model.prior=flow",
                                 "--set", "model.prior.num_flows=1000000000"]), "more than 20000 tensors")
    assert time.monotonic() - start < 30 and not (tmp_path / "new").exists()


def test_config_toml_and_the_checkpoint_must_agree(run_copy, tmp_path, capsys):
    d = parse_toml((run_copy / "config.toml").read_text(), "c")
    d["model"]["latent_dim"] = 3
    (run_copy / "config.toml").write_text(dumps(d))
    for argv in openers(run_copy, tmp_path):
        one_line_error(capsys, main(argv), "differ in model.latent_dim")


def test_a_non_finite_evaluation_is_refused_and_never_written(run_copy, capsys, monkeypatch):
    evaluate_module = sys.modules["pyrovae.app.run"]  # evaluate_run scores with the evaluate it imports
    original = evaluate_module.evaluate
    monkeypatch.setattr(evaluate_module, "evaluate", lambda *a, **k: {**original(*a, **k), "test_nll": float("nan")})
    one_line_error(capsys, main(["evaluate", str(run_copy), "--nll-samples", "3", "--iwae-samples", "2"]),
                   "the evaluation gave test_nll = nan")
    assert not (run_copy / "evaluation.json").exists()


# -- the run's own files, its lock, the terminal ----------------------------------------------------
@pytest.mark.parametrize("target", ["checkpoint.pt", "config.toml", "metrics.jsonl", ".lock", "samples.png",
                                    "plugins/x.json", "notes.txt"])
def test_evaluate_out_never_overwrites_the_runs_own_files(run_copy, capsys, target):
    (run_copy / "plugins").mkdir(exist_ok=True)
    path = run_copy / target
    if not path.exists():
        path.write_text("mine")
    before = path.read_bytes()
    one_line_error(capsys, main(["evaluate", str(run_copy), "--nll-samples", "3", "--out", str(path)]), "--out ")
    assert path.read_bytes() == before
    assert main(["evaluate", str(run_copy), "--nll-samples", "3", "--iwae-samples", "2",
                 "--out", str(run_copy / "eval-k3.json")]) == 0
    assert json.loads((run_copy / "eval-k3.json").read_text())["num_test"] > 0


def test_deleting_the_lock_file_lets_no_second_writer_in(run_copy, capsys):
    with RunLock(run_copy):
        (run_copy / ".lock").unlink()
        one_line_error(capsys, main(["train", "--out", str(run_copy), "--resume", "--set", "train.epochs=3"]),
                       "another pyrovae process")
        one_line_error(capsys, main(["evaluate", str(run_copy), "--nll-samples", "3"]), "another pyrovae process")
    code = ("import sys, time; from pyrovae.app.files import RunLock; l = RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_copy)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        (run_copy / ".lock").unlink(missing_ok=True)
        one_line_error(capsys, main(["train", "--out", str(run_copy), "--resume", "--set", "train.epochs=3"]),
                       f"another pyrovae process (pid {holder.pid})" if (run_copy / ".lock").exists()
                       else "another pyrovae process")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert main(["train", "--out", str(run_copy), "--resume", "--set", "train.epochs=3", "-q"]) == 0


def test_escapes_in_keys_and_values_are_shown_not_sent(tmp_path, capfd):
    hostile = "\x1b]0;pwned\x07\x1b[2J\u202e"
    config = tmp_path / "c.toml"
    config.write_text(f'[train]\n"{hostile}" = 1\n', encoding="utf-8")
    for argv in (["train", str(config), "--out", str(tmp_path / "r")],
                 ["train", "--out", str(tmp_path / "r"), "--set", f"model.prior={hostile}"],
                 ["train", "--out", str(tmp_path / "r"), "--set", f"{hostile}.x=1"]):
        assert main(argv) == 2
        err = capfd.readouterr().err
        assert "\x1b" not in err and "\x07" not in err and "\u202e" not in err and "\\x1b" in err, err
        assert err.count("\n") == 1


# -- full disks, for real ---------------------------------------------------------------------------------
def test_a_full_disk_while_the_run_folder_is_set_up_leaves_nothing_behind(small_disk, tmp_path, capsys):
    from conftest import fill_disk

    shutil.copy(PLUGIN, tmp_path / "two_latents.py")
    config = tmp_path / "run.toml"
    config.write_text('[plugins]\nmodules = ["two_latents.py"]\n[data]\nbinarize = "threshold"\n[model]\n'
                      'family = "two_latents"\nhidden = 16\n[train]\nepochs = 1\nprogress = false\n')
    run = small_disk / "run"
    filler = fill_disk(small_disk)
    one_line_error(capsys, main(["train", str(config), "--out", str(run), "-q"]), "No space left on device")
    assert not run.exists() or not [p for p in run.iterdir() if p.name != ".lock"], list(run.iterdir())
    filler.unlink()
    assert main(["train", str(config), "--out", str(run), "-q"]) == 0  # the same --out works


def test_a_plugins_record_round_trips_through_config_toml():
    table = {"modules": ["a.b"], "files": ["/x/a/b.py"], "sha256": ["0" * 64]}
    plugins = PluginsConfig(**table)
    assert plugins.record().as_config() == table


def test_a_run_recorded_before_plugins_files_existed_still_opens_and_resumes(run_copy, tmp_path):
    rewrite(run_copy, config_edit=lambda d: d["plugins"].pop("files"))
    assert "files" not in parse_toml((run_copy / "config.toml").read_text(), "c")["plugins"]
    for argv in openers(run_copy, tmp_path):
        assert main(argv) == 0, argv
