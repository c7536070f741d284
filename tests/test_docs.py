"""The docs stay true to the code: the README's example runs, its tables list every key and
name, every example config loads, every example script runs at a tiny setting."""

import argparse
import dataclasses
import importlib.util
import math
import re
from pathlib import Path

import pytest

from pyrovae import DECODERS, ENCODERS, LIKELIHOODS, OPTIMIZERS, PRIORS, load_config
from pyrovae.config import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))


def test_readme_python_example_runs():
    block = re.search(r"## In Python, with plain Pyro SVI\n\n```python\n(.*?)```", README, re.S).group(1)
    assert "range(2000)" in block
    namespace = {}
    exec(compile(block.replace("range(2000)", "range(30)"), "README.md", "exec"), namespace)
    assert math.isfinite(namespace["loss"])


def test_readme_config_table_lists_every_key():
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            key = f"{section}.{f.name}"
            assert f"`{key}`" in README or (key in ("model.encoder", "model.decoder") and
                                           "`model.encoder`, `model.decoder`" in README), key
    for name in OPTIMIZERS.names():
        assert f"`{name}`" in README
        for option in OPTIMIZERS.options(name):
            assert f"`{option}`" in README or option == "lr", (name, option)


def test_readme_lists_every_registered_part_and_its_options():
    for registry in (PRIORS, LIKELIHOODS, ENCODERS, DECODERS):
        for name in registry.names():
            assert f"`{name}`" in README, name
            for option in registry.options(name):
                assert f"`{option}" in README, (name, option)


@pytest.mark.parametrize("config", sorted((ROOT / "examples" / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_load(config):
    cfg = load_config(str(config))
    assert cfg.data.name == config.stem


# Every example script and the arguments that run it in seconds. A new script must be added here.
SMOKE_ARGS = {
    "svi_vae.py": dict(epochs=1, estimator="mc", data="digits", data_path=None, prior="mixture", latent_dim=2,
                       batch_size=200, learning_rate=1e-3, seed=0),
}


def test_every_example_is_listed():
    assert EXAMPLES == sorted(SMOKE_ARGS), "add the new example to SMOKE_ARGS with a tiny setting"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name):
    spec = importlib.util.spec_from_file_location(name[:-3], ROOT / "examples" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(argparse.Namespace(**SMOKE_ARGS[name]))
    assert result < 0  # an ELBO of binary digits
