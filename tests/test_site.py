"""The documentation site builds, strictly, and its parts are true to the code: the API reference
names every public name once, the strict build fails on a broken link, a missing page or an
unreadable docstring, and the build runs the tutorial notebook from top to bottom (an error in a
cell fails it) and shows its outputs."""

import collections
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import griffe
import nbformat

import pyrovae

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorials" / "getting_started.ipynb"


def test_api_reference_names_every_public_name_exactly_once():
    named = collections.Counter(name for page in (ROOT / "docs" / "api").glob("*.md")
                                for name in re.findall(r"^::: pyrovae\.(\w+)$", page.read_text(), re.M))
    assert set(named) == set(pyrovae.__all__), (set(pyrovae.__all__) - set(named), set(named) - set(pyrovae.__all__))
    assert [name for name, count in named.items() if count > 1] == []


def test_sphinx_roles_become_inline_code():
    spec = importlib.util.spec_from_file_location("sphinx_roles", ROOT / "docs" / "sphinx_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = ("a :class:`~pyrovae.models.vae.VAE`, :func:`pyrovae.fit` and :meth:`~pyrovae.Model.terms`.\n"
            "Public API::\n\n    VAE  the family\n\nkeep a::b and ``code``")
    assert module.markdown(text) == ("a ``VAE``, ``pyrovae.fit`` and ``terms``.\nPublic API:\n\n    VAE  the family\n\n"
                                     "keep a::b and ``code``")


def test_site_builds_in_strict_mode_and_runs_the_tutorial(tmp_path):
    site = tmp_path / "site"
    # the notebook's kernel is one more process beside the suite's workers: one thread
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS="1", PYROVAE_DOCS_RUN_NOTEBOOK="true")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    models = (site / "api" / "models.html").read_text()
    assert "Kingma" in models and "AmortizedGuide" in models  # the docstrings, rendered
    assert ":class:" not in models and ":param" not in models
    assert "throughput.py" in (site / "benchmarks.html").read_text()  # benchmarks/README.md, included
    assert "--8&lt;--" not in (site / "benchmarks.html").read_text()
    tutorial = (site / "tutorials" / "getting_started.html").read_text()
    elbos = [float(v) for v in re.findall(r"test ELBO after \d+ epochs: (-?\d+\.\d+)", tutorial)]
    assert len(elbos) == 4 and all(50 < elbo < 150 for elbo in elbos), elbos  # grey digits: positive nats
    assert tutorial.count('<img alt="No description has been provided') == 4  # its figures
    assert "Warning" not in re.sub(r"<[^>]+>", "", tutorial)  # no warning printed by any cell
    assert "Tutorial: a VAE in Pyro, step by step" in tutorial  # its title apart from "Getting started"
    screenshots = load_screenshots()
    assert screenshots.raw_roles(site) == []  # no page shows a Sphinx role as text (the config reference did)
    browser = screenshots.chromium()
    if browser is not None:  # pictures of the pages as a reader sees them, at 1280 px
        pictures = screenshots.screenshots(site, tmp_path / "shots", browser)
        assert len(pictures) == len(screenshots.PAGES)
        for picture in pictures:
            assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            width = int.from_bytes(picture.read_bytes()[16:20], "big")
            assert width == screenshots.WINDOW[0] and picture.stat().st_size > 20_000, picture


def load_screenshots():
    spec = importlib.util.spec_from_file_location("screenshots", ROOT / "docs" / "screenshots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_raw_role_in_prose_is_found_and_one_in_code_is_not(tmp_path):
    screenshots = load_screenshots()
    (tmp_path / "a.html").write_text("<p>or a :class: <code>~pyrovae.parts.priors.Prior</code>.</p>")
    (tmp_path / "b.html").write_text("<pre><code>(:class:`pyrovae.X`)</code></pre>"
                                     "<p>a <code>:class:`~x`</code> role</p>")
    (tmp_path / "c.html").write_text("<p>ratio 1:2, a::b and http://x</p>")
    assert [found.split(":")[0] for found in screenshots.raw_roles(tmp_path)] == ["a.html"]


def test_tutorial_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_every_public_name_has_a_docstring_the_reference_shows():
    package = griffe.load("pyrovae", search_paths=[str(ROOT)], resolve_aliases=True)
    missing = [name for name in pyrovae.__all__
               if not (package[name].docstring and package[name].docstring.value.strip())]
    assert missing == [], f"no docstring for the API reference: {missing}"
