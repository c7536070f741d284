"""The docs stay true to the code: the README's Python and TOML examples run, the config reference
lists every key and name, every example config loads, every example script runs at a tiny setting,
every relative link resolves. The site's build and the tutorial notebook: tests/test_site.py."""

import dataclasses
import importlib.util
import math
import re
import warnings
from pathlib import Path

import pytest

from pyrovae import (
    ALGORITHMS,
    CLASSIFIERS,
    DECODERS,
    ENCODERS,
    LIKELIHOODS,
    OPTIMIZERS,
    POSTERIORS,
    PRIORS,
    PosteriorCollapseWarning,
    load_config,
)
from pyrovae.app.cli import main as cli_main
from pyrovae.app.config import SECTIONS, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONFIG_PAGE = (ROOT / "docs" / "config.md").read_text()
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py"))


def test_readme_python_example_runs():
    block = re.search(r"## In Python, with plain Pyro SVI\n\n[^`]*```python\n(.*?)```", README, re.S).group(1)
    assert "range(1, 2001)" in block and "print(f\"step {step}" in block  # a line per 500 steps
    namespace = {}
    exec(compile(block.replace("range(1, 2001)", "range(1, 31)"), "README.md", "exec"), namespace)
    assert math.isfinite(namespace["loss"])


def test_readme_toml_example_trains(tmp_path, monkeypatch):
    block = re.search(r"## In TOML, from the command line\n.*?```toml\n# vae.toml\n(.*?)```", README, re.S).group(1)
    command = re.search(r"\./dev pyrovae (train vae\.toml [^#\n]*?)\s+#", README).group(1).split()
    (tmp_path / "vae.toml").write_text(block)
    cfg = load_config(str(tmp_path / "vae.toml"))
    assert cfg.model.prior == {"name": "mixture", "num_components": 10}
    assert cfg.model.likelihood == "continuous_bernoulli"
    monkeypatch.chdir(tmp_path)
    command[command.index("train.epochs=5")] = "train.epochs=1"
    assert cli_main(command + ["--out", "run", "-q"]) == 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def config_page_section(title: str) -> str:
    """The part of docs/config.md under the heading ``## title``, up to the next heading."""
    return CONFIG_PAGE.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_config_reference_lists_every_key():
    for section, cls in SECTIONS.items():
        names = (list(cls().to_dict()) if cls is ModelConfig
                 else [f.name for f in dataclasses.fields(cls) if f.name != "options"])  # data's: its other keys
        table = config_page_section(f"[{section}]")
        for name in names:
            assert f"| `{name}` |" in table, f"{section}.{name}"
    optimizers = config_page_section("[optim]")
    for name in OPTIMIZERS.names():
        assert f"| `{name}` |" in optimizers
        for option in OPTIMIZERS.options(name):
            assert f"`{option}` = " in optimizers, (name, option)


def test_config_reference_lists_every_registered_part_and_its_options():
    for registry in (PRIORS, LIKELIHOODS, ENCODERS, DECODERS, POSTERIORS, CLASSIFIERS, ALGORITHMS):
        for name in registry.names():
            rows = re.findall(rf"^\| `{name}` \|.*$", CONFIG_PAGE, re.M)  # mlp, conv: encoders and decoders
            assert rows, name
            for option in registry.options(name):
                assert any(f"`{option}` = " in r for r in rows), (name, option)


@pytest.mark.parametrize("config", sorted((ROOT / "examples" / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_example_configs_load(config):
    cfg = load_config(str(config))
    assert config.stem == cfg.data.name or config.stem.endswith("_" + cfg.data.name)  # e.g. m2_mnist.toml


# Every example script, with what its smoke run must return. A new script must be added here.
SMOKE = {
    "svi_vae.py": lambda result: result < 0,  # the test ELBO of binary digits
    "swap_priors.py": lambda result: [r["prior"] for r in result] == ["standard_normal", "mixture", "vamp", "flow"],
    "swap_likelihoods.py": lambda result: len(result) == 5 and all(math.isfinite(r["test_nll"]) for r in result),
    "autoencoder_vs_vae.py": lambda result: set(result) == {"autoencoder", "vae"},
    "optimizers.py": lambda result: set(result) == {"adagrad", "rmsprop", "adam"},
    "anomaly_detection.py": lambda result: all(0 <= v <= 1 for v in result.values()),
    "latent_traversal.py": lambda result: result["traversals.png"][0] == 4 * 11,
    "reproduce_paper.py": lambda result: (  # every system has a finite bound at every budget of figures 2 and 3
        {(r["system"], r["nz"]) for r in result[2]} == {(s, nz) for s in ("aevb", "wake_sleep") for nz in (2, 3)}
        and {r["system"] for r in result[3]} == {"aevb", "wake_sleep", "mcem"}
        and all(math.isfinite(r["test_bound"]) for r in result[3])
        and [p.name for p in result[4] + result[5]] == ["figure4-digits.png", "figure5-digits.png"]),
    "conditional_vae.py": lambda result: math.isfinite(result["test_elbo"]) and 0 <= result["sample_accuracy"] <= 1,
    "semi_supervised.py": lambda result: [r["labels"] for r in result] == [50]
        and all(0 <= r["m2_accuracy"] <= 1 for r in result),
    "hierarchical.py": lambda result: [r["model"] for r in result] == ["vae", "vae + iaf", "hvae", "hvae + iaf"]
        and [r["estimator"] for r in result] == ["analytic", "mc", "mc", "mc"]
        and all(r["test_elbo"] <= r["test_iwae50"] for r in result),
    "single_cell.py": lambda result: [r["method"][:4] for r in result] == ["PCA ", "NB, ", "ZINB", "Pois", "NB, "]
        and all(-1 <= r["ari"] <= 1 for r in result) and all(math.isfinite(r["test_elbo"]) for r in result[1:]),
    "lightning_vae.py": lambda result: result["processes"] == 1 and result["points_per_epoch_per_process"] == 1617
        and -60 < result["test_elbo"] < 0,
    "own_model.py": lambda result: result["sites"] == ["bias", "ink", "z"]
        and result["test_elbo"] <= result["test_iwae"] and result["ink_median_range"][0] > 0,
}


def test_every_example_is_listed():
    assert EXAMPLES == sorted(SMOKE), "add the new example to SMOKE with a check of its result"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name, tmp_path):
    spec = importlib.util.spec_from_file_location(name[:-3], ROOT / "examples" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = module.parser()
    argv = ["--smoke"] + (["-o", str(tmp_path)] if any(a.dest == "out" for a in parser._actions) else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PosteriorCollapseWarning)  # one epoch may not wake every unit
        result = module.main(parser.parse_args(argv))
    assert SMOKE[name](result)
    assert all(p.stat().st_size > 0 for p in tmp_path.iterdir())


def test_config_reference_page_is_generated_from_the_code():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "docs" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs" / "config.md").read_text() == module.render(), \
        "regenerate it: python docs/config_reference.py > docs/config.md"


def test_every_example_has_a_docs_page_and_every_link_resolves():
    for name in EXAMPLES:
        page = ROOT / "docs" / "examples" / name.replace(".py", ".md")
        assert page.is_file(), name
        assert f'--8<-- "examples/{name}"' in page.read_text(), f"{page.name} should include its script"
    for page in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to a missing {target}"


def test_command_line_page_shows_every_command_and_flag():
    import argparse

    from pyrovae.app.cli import build_parser

    synopsis = (ROOT / "docs" / "cli.md").read_text().split("```\n", 2)[1]
    lines = {line.split()[1]: line for line in synopsis.splitlines() if line.startswith("pyrovae ")}
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(lines) == set(commands)
    for name, command in commands.items():
        for action in command._actions:
            if action.option_strings and "--help" not in action.option_strings:
                assert any(option in lines[name] for option in action.option_strings), (name, action.option_strings)


def test_evaluation_page_describes_every_number_evaluate_reports():
    import pyrovae

    data = pyrovae.load_dataset("digits")
    scores = pyrovae.evaluate(pyrovae.VAE(data.event_shape), data.test, nll_samples=4, iwae_samples=2, elbo_particles=1)
    page = (ROOT / "docs" / "evaluation.md").read_text()
    assert [key for key in scores if f"`{key}`" not in page] == []


def test_run_folders_page_lists_every_file_a_run_writes():
    from pyrovae.app import files

    table = (ROOT / "docs" / "run-folders.md").read_text().split("## What a run folder holds", 1)[1].split("\n## ")[0]
    for name in (*files.OWN_FILES, files.EVALUATION, files.EVALUATION_BEST, files.PLUGINS + "/", "tensorboard/"):
        assert f"`{name}`" in table, name


def test_your_data_page_python_example_runs():
    page = (ROOT / "docs" / "your-data.md").read_text()
    block = page.split("```python\n")[1].split("```")[0]
    namespace = {}
    exec(compile(block, "docs/your-data.md", "exec"), namespace)
    assert namespace["metrics"][-1]["test_elbo"] is not None


def documented_errors():
    """Every ``$ pyrovae ...`` line of the README and the docs whose next line is an error, with that line."""
    pairs = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines[:-1]):
            command = re.match(r"\$ (?:\./dev )?pyrovae (.*)$", line)
            if command and lines[i + 1].startswith("pyrovae: error: ") and "runs/" not in line:
                pairs.append(pytest.param(command.group(1), lines[i + 1], id=f"{page.name}:{i + 1}"))
    return pairs


@pytest.mark.parametrize("arguments, expected", documented_errors())
def test_a_documented_error_is_what_the_command_prints(arguments, expected, capsys, monkeypatch):
    import shlex

    monkeypatch.delenv("PYROVAE_CLI", raising=False)
    assert cli_main(shlex.split(arguments)) == 2
    assert capsys.readouterr().err.strip() == expected


def shell_block(page: Path, heading: str) -> list:
    """The command lines of the first ``bash`` block under ``heading`` (comments dropped)."""
    text = page.read_text().split(heading, 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_getting_started_commands_run_as_typed_at_a_tiny_budget(tmp_path, monkeypatch, capsys):
    """Every ``./dev pyrovae`` line of "Change anything by name", run in a fresh folder with a step
    budget of 2 (and a small evaluation): each succeeds, and ``runs/<run>`` is the first run's folder.
    The MNIST line names a placeholder path; it runs with the shared copy where there is one."""
    import shlex

    monkeypatch.chdir(tmp_path)
    mnist = ROOT.parent / "shared" / "data" / "mnist"
    run = None
    commands = shell_block(ROOT / "docs" / "getting-started.md", "## Change anything by name")
    assert len(commands) >= 6 and all(c.startswith("./dev pyrovae ") for c in commands), commands
    for command in commands:
        argv = shlex.split(command)[2:]
        if "data.path=/where/MNIST/lives" in argv:
            if not mnist.is_dir():
                continue
            import shutil

            shutil.copytree(mnist, tmp_path / "mnist")  # never written into the shared copy; torchvision finds
            # its files there (checked against their md5) and extracts them without the network
            argv = [str(ROOT / a) if a.startswith("examples/") else a.replace("/where/MNIST/lives", "mnist")
                    for a in argv]
        argv = [a.replace("runs/<run>", str(run)) for a in argv]
        if argv[0] == "train":
            argv += ["--set", "train.max_steps=2", "--set", "train.eval_particles=2", "-q"]
        if argv[0] == "evaluate":
            argv += ["--nll-samples", "4", "--iwae-samples", "2", "-k", "2", "-q"]
        assert cli_main(argv) == 0, (command, capsys.readouterr().err)
        if run is None:
            run = next((tmp_path / "runs").iterdir())
    assert (tmp_path / "runs" / "latents.npz").is_file() and (tmp_path / "runs" / "samples.png").is_file()
    assert (run / "evaluation.json").is_file()
