"""CUDA end to end: skipped on machines without a GPU (CI has none)."""

from conftest import requires_cuda

from pyrovae import VAE, dataset_elbo, fit, load_dataset


@requires_cuda
def test_training_and_evaluation_stay_on_the_gpu():
    data = load_dataset("digits", device="cuda")
    assert data.train.is_cuda and data.test.is_cuda
    vae = VAE(data.event_shape, 2)
    metrics = fit(vae, data, epochs=2, device="cuda", progress=False)
    assert vae.device.type == "cuda"
    assert metrics[-1]["test_elbo"] > metrics[0]["train_elbo"]
    assert vae.sample(4).is_cuda
    assert abs(dataset_elbo(vae, data.test) - metrics[-1]["test_elbo"]) < 1e-3
