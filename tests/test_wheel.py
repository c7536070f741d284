"""The installable wheel: built by ``python -m build``, installed (not editable) in a fresh virtual
environment, it trains the embedded default from a folder outside the repository."""

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import pyrovae

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("build")


def test_the_wheel_installs_and_trains_from_a_fresh_environment(tmp_path):
    source = tmp_path / "source"  # a copy of the tracked tree: the build never writes into the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "site", "*.egg-info",
                                                                "build", "dist", "__pycache__", "examples/out"))
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, text=True)
    wheels = list((tmp_path / "dist").glob("pyrovae-*.whl"))
    assert [w.name for w in wheels] == [f"pyrovae-{pyrovae.__version__}-py3-none-any.whl"]
    assert list((tmp_path / "dist").glob(f"pyrovae-{pyrovae.__version__}.tar.gz"))
    # a fresh environment; its dependencies (torch, pyro, ...) are this one's, seen through a .pth
    # file (no download), and pyrovae itself only from the wheel
    env = tmp_path / "env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheels[0])],
                   check=True, capture_output=True, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import pyrovae; print(pyrovae.__file__)"], cwd=elsewhere,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(env) and not Path(where).is_relative_to(ROOT)
    version = subprocess.run([str(env / "bin" / "pyrovae"), "--version"], check=True, capture_output=True, text=True)
    assert version.stdout.strip() == f"pyrovae {pyrovae.__version__}"
    done = subprocess.run([str(env / "bin" / "pyrovae"), "train", "--quiet", "--threads", "1", "--set",
                           "train.epochs=1", "--out", "run"], cwd=elsewhere, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (elsewhere / "run" / "checkpoint.pt").is_file() and "test ELBO" in done.stdout
