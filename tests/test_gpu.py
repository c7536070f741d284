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


@requires_cuda
@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_file_trains_on_the_gpu_as_in_memory(tmp_path, workers):
    """Streamed uint8 batches, pinned and copied to the device, converted there: the same run as
    the split held in GPU memory (up to the GPU's floating-point rounding across kernels)."""
    import numpy as np
    import torch

    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (600, 8, 8), dtype=np.uint8))
    runs = []
    for in_memory in (True, False):
        data = load_dataset("file", str(tmp_path / "x.npy"), binarize="dynamic", device="cuda",
                            in_memory=in_memory, num_workers=workers)
        assert data.streamed != in_memory and data.train_split.device.type == "cuda"
        torch.manual_seed(0)
        vae = VAE(data.event_shape, 2)
        metrics = fit(vae, data, epochs=2, batch_size=64, device="cuda", eval_every=1, progress=False)
        runs.append((metrics, vae))
    (a, va), (b, vb) = runs
    assert [r["train_elbo"] for r in a] == pytest.approx([r["train_elbo"] for r in b], rel=1e-5)
    for p, q in zip(va.parameters(), vb.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert b[-1]["test_elbo"] is not None and dataset_elbo(vb, data.test_split) == pytest.approx(b[-1]["test_elbo"],
                                                                                              abs=1e-3)


@requires_cuda
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_on_the_gpu_to_the_float32_elbo(tmp_path, precision):
    """Autocast on CUDA (float16 with its gradient scaler, whose state the checkpoint keeps)."""
    from pyrovae.app.checkpoint import read_checkpoint

    elbos = {}
    for p in ("32", precision):
        config = Config()
        config.train.device, config.train.precision, config.train.progress = "cuda", p, False
        config.train.epochs = 5
        run = train(config, tmp_path / p)
        elbos[p] = read_checkpoint(run / "checkpoint.pt")["metrics"][-1]["test_elbo"]
    assert elbos[precision] == pytest.approx(elbos["32"], abs=0.5)
    scaler = read_checkpoint(tmp_path / precision / "checkpoint.pt")["scaler"]
    assert (scaler.get("scale", 0) > 0) == (precision == "16-mixed")
