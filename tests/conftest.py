import atexit
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyrovae import VAE

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n 2: a process per core, one thread each (and their children)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


#: the process groups of the children the tests started that may still run (each child leads its own)
CHILD_GROUPS = set()


def end_groups(groups) -> None:
    """Kill every process of each group (a test's child and whatever it started: torchrun's workers)."""
    for group in list(groups):
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        groups.discard(group)


def _end_children_then_stop(number, frame):
    """The runner is stopped (SIGTERM): its tests' children stop with it, then it does."""
    end_groups(CHILD_GROUPS)
    signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)


atexit.register(end_groups, CHILD_GROUPS)
signal.signal(signal.SIGTERM, _end_children_then_stop)


@pytest.fixture(autouse=True)
def children_end_with_the_test(monkeypatch):
    """Every process a test starts leads a process group of its own, which is killed when the test
    ends, fails or times out (a child's own children too); and when the runner is stopped."""
    started = []
    original = subprocess.Popen.__init__

    def start(self, *args, **kwargs):
        if not kwargs.get("start_new_session") and kwargs.get("process_group") is None:
            kwargs["process_group"] = 0
        original(self, *args, **kwargs)
        started.append(self.pid)
        CHILD_GROUPS.add(self.pid)

    monkeypatch.setattr(subprocess.Popen, "__init__", start)
    yield
    end_groups(set(started))
    CHILD_GROUPS.difference_update(started)


@pytest.fixture(autouse=True)
def pyro_setup():
    """Seed every test, clear the param store and turn Pyro's validation on (as Pyro's own tests do)."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def registries_as_they_were():
    """What a test registers (a plugin, a docs snippet, an example's family) is gone after it:
    the registries are global, and the config reference lists what they hold."""
    from pyrovae import (
        ALGORITHMS,
        CLASSIFIERS,
        DATASETS,
        DECODERS,
        ENCODERS,
        ESTIMATORS,
        LIKELIHOODS,
        MODELS,
        OPTIMIZERS,
        POSTERIORS,
        PRIORS,
    )
    from pyrovae.app.plugins import _EXECUTED, _SOURCES

    registries = (ALGORITHMS, CLASSIFIERS, DATASETS, DECODERS, ENCODERS, ESTIMATORS, LIKELIHOODS, MODELS, OPTIMIZERS,
                  POSTERIORS, PRIORS)
    saved = [dict(r._entries) for r in registries]
    executed, sources = dict(_EXECUTED), dict(_SOURCES)
    yield
    for registry, entries in zip(registries, saved):
        registry._entries.clear()
        registry._entries.update(entries)
    for cache, before in ((_EXECUTED, executed), (_SOURCES, sources)):
        cache.clear()
        cache.update(before)


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory):
    """A private copy of ../shared/data/mnist (torchvision extracts files there, and shared/ is read-only)."""
    src = Path(os.environ.get("PYROVAE_SHARED_DATA", SHARED_DATA)) / "mnist" / "MNIST"
    if not src.is_dir():
        pytest.skip("MNIST not present in ../shared/data")
    root = tmp_path_factory.mktemp("mnist")
    shutil.copytree(src, root / "MNIST")
    return root


@pytest.fixture(scope="session")
def frey_file():
    path = Path(os.environ.get("PYROVAE_SHARED_DATA", SHARED_DATA)) / "frey" / "frey_rawface.mat"
    if not path.is_file():
        pytest.skip("Frey Face not present in ../shared/data")
    return path


def binary_batch(m=16, shape=(1, 8, 8)):
    return torch.bernoulli(torch.full((m, *shape), 0.3))


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# -- probabilistic PCA: z ~ N(0, I), x = W z + b + N(0, s^2 I), so p(x) = N(b, W W^T + s^2 I) -------------
class LinearDecoder(nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)

    def forward(self, z):
        return (z @ self.w.T + self.b).unsqueeze(-2)  # (..., num_params = 1, D)


class OffsetPosteriorEncoder(nn.Module):
    """The exact pPCA posterior, deliberately shifted and widened, so importance sampling has work to do."""

    def __init__(self, w, b, s, shift=0.3, widen=1.5):
        super().__init__()
        d = w.shape[1]
        precision = w.T @ w / s**2 + torch.eye(d)
        self.cov = torch.linalg.inv(precision)
        self.a, self.b, self.shift = self.cov @ w.T / s**2, b, shift
        self.log_var = torch.log(torch.diagonal(self.cov) * widen**2)

    def forward(self, x):
        loc = (x - self.b) @ self.a.T + self.shift
        return loc, self.log_var.expand_as(loc)


@pytest.fixture
def ppca():
    torch.manual_seed(0)
    latent, dim, s = 2, 6, 0.5
    w, b = torch.randn(dim, latent), torch.randn(dim)
    vae = VAE((dim,), latent, prior="standard_normal", likelihood={"name": "gaussian", "scale": s},
              encoder=OffsetPosteriorEncoder(w, b, s), decoder=LinearDecoder(w, b))
    marginal = dist.MultivariateNormal(b, w @ w.T + s**2 * torch.eye(dim))
    x = marginal.sample((40,))
    return vae, x, marginal.log_prob(x)


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MiB file system (tmpfs, mounted as root) to fill up: ENOSPC from the kernel, not a mock."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill_disk(folder) -> Path:
    """Fill the file system under ``folder`` to the last byte; returns the filler file (delete it to free the disk)."""
    filler = Path(folder) / "filler"
    with open(filler, "ab", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while f.write(b"\0" * chunk):
                    pass
            except OSError:
                pass
    return filler


def one_line_error(capsys, code, pattern=""):
    """The CLI refused with exit status 2 and one line on stderr that contains ``pattern``."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("pyrovae: error: ") and err.count("\n") == 1, err
    assert pattern in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished two-epoch run folder of a small vae (copied per test by ``run_copy``)."""
    from test_reliability import small_config

    from pyrovae import train

    run = tmp_path_factory.mktemp("trained") / "run"
    train(small_config(epochs=2), run)
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of ``trained`` for a test to alter."""
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


def sparse_images(path, n: int, value: int = 7):
    """A uint8 .npy of n 28x28 images, written sparse (every 1000th set to value): the file is
    large, the test's memory and disk are not."""
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 28, 28))
    images[::1000] = value
    images.flush()
    del images
    return path


def pyrovae_in_cgroup(limit_bytes: int, args, timeout: int = 600):
    """``python -m pyrovae ARGS`` in a fresh cgroup (v1) whose memory limit is ``limit_bytes``
    (skipped without root or the controller); the process and the group's peak usage in bytes."""
    import subprocess
    import sys

    base = Path("/sys/fs/cgroup/memory")
    if os.geteuid() != 0 or not (base / "memory.limit_in_bytes").exists():
        pytest.skip("needs root and the cgroup v1 memory controller")
    group = base / f"pyrovae_test_{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        code = f"echo $$ > {group}/cgroup.procs && exec {sys.executable} -m pyrovae {' '.join(map(str, args))}"
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
        peak = int((group / "memory.max_usage_in_bytes").read_text())
    finally:
        group.rmdir()
    return proc, peak


#: the suite's longest tests (20 to 35 s each on 2 cores), run first: with --dist worksteal each worker
#: starts on its half of the list and steals from the other's end, so a long test collected late
#: would leave one worker idle while the other finishes it
LONG_FIRST = ("test_site.py::test_site_builds_in_strict_mode_and_runs_the_tutorial",
              "test_runfolder.py::test_kills_at_random_moments_never_duplicate_or_lose_an_epoch",
              "test_field_runner.py::test_a_row_interrupted_and_run_again_goes_on_from_its_checkpoint",
              "test_distributed.py::test_two_machines_streaming_a_file_match_one_process",
              "test_runfolder.py::test_writers_started_together",
              "test_plugins.py::test_a_plugin_family_under_torchrun_matches_one_process",
              "test_lightning.py::test_lightning_ddp_on_two_cpu_processes",
              "test_streaming.py::test_a_file_larger_than_the_memory_allowed_streams")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: not any(name in item.nodeid for name in LONG_FIRST))  # stable: else as collected
