"""Property-based tests (hypothesis): any value in any config field, and any small array as a
data file, either trains or is rejected with exit status 2 and one line on stderr, never a
traceback."""

import math
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyrovae import PosteriorCollapseWarning
from pyrovae.app.cli import main
from pyrovae.app.tomlfile import dumps

junk = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                 st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=3),
                 st.dictionaries(st.sampled_from(["name", "x", "hidden"]), st.integers(0, 4), max_size=2))
small_int = st.integers(-3, 4)
any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
net = st.fixed_dictionaries({"name": st.sampled_from(["mlp", "conv", "rnn"]),
                             "hidden": st.one_of(st.lists(st.integers(-1, 16), max_size=2), junk),
                             "activation": st.sampled_from(["tanh", "relu", "softplus", "swish"])})
part = lambda names, options: st.one_of(  # noqa: E731
    st.sampled_from(names), junk,
    st.builds(lambda n, o: {"name": n, **o}, st.sampled_from(names), st.dictionaries(st.sampled_from(options),
                                                                                     st.one_of(any_float, junk),
                                                                                     max_size=2)))

# For every config field, a strategy of valid values (kept small, so that a valid config trains
# in a second) and one of anything; each drawn field takes a valid value four times in five.
VALID = {
    "data": {"name": st.sampled_from(["digits"]), "binarize": st.sampled_from(["dynamic", "threshold"]),
             "test_fraction": st.floats(0.05, 0.5), "download": st.booleans(), "path": st.just("unused")},
    "model": {"latent_dim": st.integers(1, 4),
              "prior": st.sampled_from(["standard_normal", "gaussian", "mixture", "vamp", "flow"]),
              "likelihood": st.sampled_from(["bernoulli", "continuous_bernoulli"]),
              "encoder": st.fixed_dictionaries({"name": st.sampled_from(["mlp", "conv"]),
                                                "activation": st.sampled_from(["tanh", "relu", "softplus"])}),
              "decoder": st.fixed_dictionaries({"name": st.just("mlp"), "hidden": st.lists(st.integers(1, 16),
                                                                                            max_size=2)})},
    "train": {"epochs": st.integers(1, 2), "batch_size": st.integers(1, 1617),
              "estimator": st.sampled_from(["auto", "mc", "iwae"]), "num_particles": st.integers(1, 3),
              "seed": st.integers(0, 2**32 - 1), "device": st.just("cpu"), "eval_every": st.integers(1, 3),
              "eval_particles": st.integers(1, 3), "beta": st.floats(0, 3), "kl_warmup_epochs": st.integers(0, 2),
              "progress": st.just(False), "on_nan": st.sampled_from(["stop", "rollback"]),
              "rollback_lr_factor": st.floats(0.1, 0.9), "max_rollbacks": st.integers(0, 2),
              "labeled_per_batch": st.integers(0, 3), "labeled_weight": st.one_of(st.floats(0.5, 5),
                                                                                  st.just("balanced"))},
    "optim": {"name": st.sampled_from(["adam", "adagrad", "rmsprop", "clipped_adam"]), "lr": st.floats(1e-4, 0.1),
              "weight_decay": st.floats(0, 0.1)},
}
ANYTHING = {
    "data": {"name": st.sampled_from(["file", "cifar"]), "binarize": st.sampled_from(["none", "yes"]),
             "test_fraction": st.one_of(any_float, junk), "download": junk, "path": junk},
    "model": {"latent_dim": st.one_of(small_int, junk.filter(lambda v: not isinstance(v, int) or v < 8)),
              "prior": part(["standard_normal", "gaussian", "mixture", "vamp", "flow", "x"],
                            ["num_components", "spread", "num_pseudo_inputs", "num_flows", "k"]),
              "likelihood": part(["bernoulli", "continuous_bernoulli", "gaussian", "laplace", "x"],
                                 ["scale", "learn_scale", "sigmoid_mean", "min_scale", "y"]),
              "encoder": st.one_of(net, junk), "decoder": st.one_of(net, junk)},
    "train": {"epochs": st.one_of(st.integers(-2, 0), st.text(max_size=3), any_float),
              "batch_size": st.one_of(st.integers(-2, 3000), any_float),
              "estimator": st.sampled_from(["analytic", "x"]),
              "num_particles": st.one_of(small_int, junk.filter(lambda v: not isinstance(v, int) or v < 8)),
              "seed": st.one_of(st.integers(-5, 2**70), junk), "device": st.sampled_from(["cuda", "tpu", "cuda:7"]),
              "eval_every": st.one_of(small_int, junk.filter(lambda v: not isinstance(v, int) or v < 8)),
              "eval_particles": st.one_of(small_int, junk.filter(lambda v: not isinstance(v, int) or v < 8)),
              "beta": st.one_of(any_float, junk), "kl_warmup_epochs": st.one_of(small_int, any_float),
              "progress": junk, "on_nan": st.sampled_from(["x", ""]), "rollback_lr_factor": any_float,
              "max_rollbacks": st.one_of(small_int, junk), "labeled_per_batch": st.one_of(st.integers(-3, 3000), junk),
              "labeled_weight": st.one_of(any_float, junk, st.sampled_from(["", "even"]))},
    "optim": {"name": st.sampled_from(["sgd", ""]), "lr": st.one_of(any_float, junk),
              "weight_decay": st.one_of(any_float, junk), "betas": st.one_of(st.lists(any_float, max_size=3), junk),
              "momentum": any_float},
}


@st.composite
def configs(draw):
    doc = {}
    for section in VALID:
        names = sorted(set(VALID[section]) | set(ANYTHING[section]))
        chosen = draw(st.sets(st.sampled_from(names), max_size=4))
        doc[section] = {}
        for key in sorted(chosen):
            valid = key in VALID[section] and (key not in ANYTHING[section] or draw(st.integers(0, 4)) > 0)
            doc[section][key] = draw((VALID if valid else ANYTHING)[section][key])
    doc["train"].setdefault("epochs", 1)
    doc["train"]["progress"] = False
    if draw(st.integers(0, 9)) == 9:  # an unknown key, or an unknown section
        doc.setdefault(draw(st.sampled_from(["data", "model", "train", "junk"])), {})["bogus"] = 1
    return doc


def toml_text(doc):
    """TOML for the document; values TOML cannot hold (None, nested junk) are dropped."""
    clean = {s: {k: v for k, v in t.items() if v is not None and not (isinstance(v, dict) and not v)}
             for s, t in doc.items() if isinstance(t, dict)}
    try:
        return dumps(clean)
    except TypeError:
        return "[train\n"  # malformed TOML is one of the inputs, too


def run_cli(argv, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PosteriorCollapseWarning)
        code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.startswith("pyrovae: error: ") and err.count("\n") == 1, err
    return code, err


# PYROVAE_HYPOTHESIS_EXAMPLES=500 searches harder (and randomly) than the suite's fixed 30.
EXAMPLES = int(os.environ.get("PYROVAE_HYPOTHESIS_EXAMPLES", 30))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES == 30,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@SETTINGS
@given(doc=configs())
def test_any_config_trains_or_is_rejected_in_one_line(tmp_path, capsys, doc):
    path = tmp_path / "c.toml"
    path.write_text(toml_text(doc))
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    code, err = run_cli(["train", str(path), "--out", str(out)], capsys)
    if code == 0:
        assert (out / "checkpoint.pt").is_file()
    elif out.exists():  # the input was fine but training diverged: the run keeps what it wrote
        assert "non-finite" in err and (out / "config.toml").is_file()


dtypes = st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.complex64, np.int8])


@st.composite
def arrays(draw):
    dtype = draw(dtypes)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6))
    shape = (draw(st.integers(0, 40)),) + shape[1:] if draw(st.booleans()) else shape
    elements = None
    if np.dtype(dtype).kind == "f":
        elements = st.one_of(st.floats(0, 1, width=32), st.floats(width=32, allow_nan=True, allow_infinity=True))
    return draw(hnp.arrays(dtype, shape, elements=elements))


@SETTINGS
@given(array=arrays(), suffix=st.sampled_from([".npy", ".npz", ".pt"]),
       likelihood=st.sampled_from(["gaussian", "bernoulli", "continuous_bernoulli", "laplace"]),
       encoder=st.sampled_from(["mlp", "conv"]), binarize=st.sampled_from(["none", "threshold", "dynamic"]))
def test_any_small_array_trains_or_is_rejected_in_one_line(tmp_path, capsys, array, suffix, likelihood, encoder,
                                                          binarize):
    path = tmp_path / f"data{len(list(tmp_path.iterdir()))}{suffix}"
    if suffix == ".npy":
        np.save(path, array)
    elif suffix == ".npz":
        np.savez(path, x=array)
    else:
        try:
            torch.save(torch.from_numpy(array), path)
        except TypeError:  # a dtype torch has no tensor for
            return
    out = path.with_suffix(".run")
    argv = ["train", "--out", str(out), "--set", "data.name=file", "--set", f"data.path={path}",
            "--set", f"model.likelihood={likelihood}", "--set", f"model.encoder={encoder}",
            "--set", f"model.decoder={encoder}", "--set", f"data.binarize={binarize}",
            "--set", "train.epochs=1", "--set", "train.batch_size=2", "--set", "train.progress=false"]
    code, err = run_cli(argv, capsys)
    assert (code == 0) == (out / "checkpoint.pt").is_file() or "non-finite" in err
    if code == 0:  # trained: its data really was fit for it
        assert array.dtype.kind != "c" and array.ndim >= 2 and math.prod(array.shape[1:]) > 0


@pytest.mark.parametrize("text", ["", "[data]\n", "\x00\x01", "[train]\nepochs = 1\nepochs = 2\n"])
def test_degenerate_config_files(tmp_path, capsys, text):
    path = Path(tmp_path) / "c.toml"
    path.write_text(text)
    code, _ = run_cli(["train", str(path), "--out", str(tmp_path / "run"), "--set", "train.epochs=1", "-q"], capsys)
    assert code == (2 if "\x00" in text or text.count("epochs") == 2 else 0)


# -- hostile TOML and hostile checkpoints ----------------------------------------------------------
def toml_value(depth_limit=4):
    leaf = st.one_of(st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=True).map(repr), st.booleans().map(
        lambda b: "true" if b else "false"), st.text(max_size=6).map(lambda t: '"' + t.replace("\\", "").replace(
            '"', "") + '"'), st.just("nan"), st.just("inf"), st.just("1979-05-27"))
    return st.recursive(leaf, lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.sampled_from(["name", "hidden", "a", "num_components"]), inner, max_size=3).map(
            lambda d: "{ " + ", ".join(f"{k} = {v}" for k, v in d.items()) + " }")), max_leaves=8)


@SETTINGS
@given(section=st.sampled_from(["model", "train", "data", "optim", "log"]),
       key=st.sampled_from(["prior", "encoder", "latent_dim", "epochs", "num_particles", "name", "lr", "x"]),
       value=toml_value(), depth=st.one_of(st.just(0), st.integers(1, 40), st.integers(400, 3000)),
       bracket=st.sampled_from(["[", "{ a = "]))
def test_any_hostile_toml_trains_or_is_rejected_in_one_line(tmp_path, capsys, section, key, value, depth, bracket):
    if depth:  # nesting deep enough to exhaust a recursive parser
        close = "]" if bracket == "[" else " }"
        value = bracket * depth + value + close * depth
    path = tmp_path / "c.toml"
    path.write_text(f"[{section}]\n{key} = {value}\n[train]\nepochs = 1\nprogress = false\n"
                    if section != "train" else f"[train]\n{key} = {value}\nepochs = 1\nprogress = false\n")
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    code, err = run_cli(["train", str(path), "--out", str(out)], capsys)
    assert len(err) < 2100
    assert (code == 0) == (out / "checkpoint.pt").is_file() or "non-finite" in err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--out", str(run), "-q", "--set", "train.epochs=1", "--set", "model.encoder.hidden=[8]",
                 "--set", "model.decoder.hidden=[8]"]) == 0
    return run


class _Reducer:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def hostile_objects(marker):
    import builtins
    import subprocess

    reducers = st.sampled_from([
        (os.system, (f"touch {marker}",)), (builtins.exec, (f"open({str(marker)!r}, 'w')",)),
        (builtins.eval, (f"open({str(marker)!r}, 'w')",)), (subprocess.call, (["touch", str(marker)],)),
        (Path.touch, (marker,)), (np.array, ([1, 2],)), (print, ("unpickled",))])
    leaf = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True), st.text(max_size=4),
                     st.builds(lambda n, d: torch.zeros(n, dtype=d), st.integers(0, 3),
                               st.sampled_from([torch.float32, torch.uint8, torch.int64, torch.bool])),
                     reducers.map(lambda r: _Reducer(*r)))
    return st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=3), inner, max_size=3)),
                        max_leaves=6)


@SETTINGS
@given(data=st.data())
def test_any_hostile_or_damaged_checkpoint_is_refused_in_one_line(tmp_path, capsys, finished_run, data):
    import shutil

    from pyrovae.app.checkpoint import FORMAT

    marker = tmp_path / "PWNED"
    run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    shutil.copytree(finished_run, run)
    (run / ".lock").unlink(missing_ok=True)
    path = run / "checkpoint.pt"
    how = data.draw(st.sampled_from(["object", "entry", "bytes", "tensor", "counter", "plugins"]))
    if how in ("tensor", "counter", "plugins"):  # a valid pickle of pyrovae's keys, with one hostile shape
        state = torch.load(path, weights_only=True)
        if how == "tensor":  # one tensor made stride-0, overlapping, non-contiguous, oversized, NaN or retyped
            tensors = [(group, key) for group in ("model",) for key in state["model"]]
            tensors += [(i, slot) for i, slots in state["optimizer"]["state"].items() for slot in slots
                        if isinstance(slots[slot], torch.Tensor) and slots[slot].dim() > 0]
            group, key = data.draw(st.sampled_from(tensors))
            holder = state["model"] if group == "model" else state["optimizer"]["state"][group]
            t = holder[key]
            variant = data.draw(st.sampled_from(["expand", "transpose", "view", "nan", "inf", "double", "int"]))
            holder[key] = {"expand": lambda: torch.zeros(1).expand(t.shape),
                           "transpose": lambda: t.t() if t.dim() == 2 else t.flip(0)[::2],
                           "view": lambda: torch.zeros(t.numel() * 4)[: t.numel()].view(t.shape),
                           "nan": lambda: torch.full_like(t, float("nan")),
                           "inf": lambda: torch.full_like(t, float("inf")),
                           "double": lambda: t.double(), "int": lambda: t.long()}[variant]()
        elif how == "counter":
            key = data.draw(st.sampled_from(sorted(state["counters"])))
            state["counters"][key] = data.draw(st.one_of(st.integers(-2**70, 2**70), any_float,
                                                         st.sampled_from([10**12, 2**62, 1, 3])))
        else:  # a plugin record, in the checkpoint alone or in both copies of the config
            name = "webbrowser" if data.draw(st.booleans()) else f"marker_{marker.stem}"
            state["config"]["plugins"] = data.draw(st.sampled_from([
                {"modules": [name], "sha256": []}, {"modules": [name], "files": [str(marker)], "sha256": ["0" * 64]},
                {"modules": [str(run / "plugins" / "x.py")], "files": [], "sha256": [""]}]))
            if data.draw(st.booleans()):
                from pyrovae.app.tomlfile import parse_toml

                d = parse_toml((run / "config.toml").read_text(), "c")
                d["plugins"] = state["config"]["plugins"]
                (run / "config.toml").write_text(dumps(d))
        torch.save(state, path)
    elif how == "object":  # a whole file of hostile or foreign objects
        torch.save(data.draw(hostile_objects(marker)), path)
    elif how == "entry":  # one entry of a real checkpoint replaced
        import pyrovae.app.checkpoint as checkpoint_module

        state = torch.load(path, weights_only=True)
        key = data.draw(st.sampled_from(sorted(state) + ["extra"]))
        state[key] = data.draw(hostile_objects(marker))
        state["format"] = data.draw(st.sampled_from([FORMAT, FORMAT, "pyrovae-checkpoint-1", "x"]))
        checkpoint_module.torch.save(state, path)
    else:  # bytes truncated, flipped or appended
        blob = bytearray(path.read_bytes())
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(blob) - 1))
            action = data.draw(st.sampled_from(["cut", "flip", "append"]))
            if action == "cut":
                blob = blob[:at]
            elif action == "flip" and blob:
                blob[at % len(blob)] ^= data.draw(st.integers(1, 255))
            else:
                blob += pickle.dumps(_Reducer(os.system, (f"touch {marker}",)))
            if not blob:
                break
        path.write_bytes(bytes(blob))
    command = data.draw(st.sampled_from(["sample", "evaluate", "resume"]))
    argv = {"sample": ["sample", str(run), "--out", str(tmp_path / "s.png")],
            "evaluate": ["evaluate", str(run), "--nll-samples", "3", "--iwae-samples", "2", "--particles", "1"],
            "resume": ["train", "--out", str(run), "--resume", "--set", "train.epochs=2"]}[command]
    run_cli(argv, capsys)
    assert not marker.exists() and "webbrowser" not in __import__("sys").modules
