"""CUDA end to end: skipped on machines without a GPU (CI has none)."""

import pytest
from conftest import requires_cuda

from pyrovae import VAE, dataset_elbo, evaluate, fit, load, load_dataset, log_likelihood, train
from pyrovae.app.config import Config


@requires_cuda
@pytest.mark.parametrize("engine", ["torch", "pyro"])
def test_training_evaluation_and_sampling_stay_on_the_gpu(engine):
    data = load_dataset("digits", device="cuda")
    assert data.train.is_cuda and data.test.is_cuda
    vae = VAE(data.event_shape, 2)
    metrics = fit(vae, data, epochs=2, device="cuda", engine=engine, eval_every=1, progress=False)
    assert vae.device.type == "cuda"
    assert metrics[-1]["test_elbo"] > metrics[0]["test_elbo"]
    assert vae.sample(4).is_cuda
    assert abs(dataset_elbo(vae, data.test) - metrics[-1]["test_elbo"]) < 1e-3
    assert log_likelihood(vae, data.test[:10], 100).is_cuda
    assert evaluate(vae, data.test[:50], nll_samples=50, iwae_samples=5)["test_nll"] > 0


@requires_cuda
def test_a_cuda_run_folder_loads_on_the_cpu(tmp_path):
    config = Config()
    config.train.device = "cuda"
    config.train.epochs = 1
    config.train.progress = False
    run = train(config, tmp_path / "run")
    vae = load(run)
    assert vae.device.type == "cpu" and vae.sample(2).shape == (2, 1, 8, 8)
