import os
import shutil
from pathlib import Path

import pyro
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def pyro_setup():
    """Seed every test, clear the param store and turn Pyro's validation on (as Pyro's own tests do)."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


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
