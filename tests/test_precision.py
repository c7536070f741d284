"""``train.precision``: bf16-mixed runs the networks in bfloat16 under autocast while the
log-densities, the KL and the ELBO stay in float32; its loss and gradient are the float32 ones
within bfloat16's rounding; it trains to the float32 run's test ELBO; 16-mixed needs CUDA."""

import pytest
import torch
from conftest import one_line_error

import pyrovae
from pyrovae import TrainConfig, load_dataset
from pyrovae.app.cli import main
from pyrovae.training.loop import Trainer
from pyrovae.training.precision import MixedPrecision, float32_outputs, networks

SMALL = {"name": "mlp", "hidden": [64]}


def step_loss(trainer, batch, noise, precision):
    """The per-datapoint loss of one step and its gradient, under ``precision``."""
    mixed = MixedPrecision(precision, "cpu")
    trainer.model.zero_grad(set_to_none=True)
    with float32_outputs(trainer.model, mixed.dtype is not None), mixed.autocast():
        loss = trainer.algorithm.loss(batch, noise, 1.0, len(batch), torch.arange(len(batch)), 0).loss
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in trainer.params])


@pytest.mark.parametrize("estimator", ["analytic", "mc"])
def test_the_bf16_loss_and_gradient_are_the_float32_ones_within_bfloat16_rounding(estimator):
    """bfloat16 keeps 8 significant bits: each input of a product inside a network is rounded by at
    most 2^-9 (0.2%) relative, with float32 accumulation, so each logit moves by at most about 0.2%
    of its size; the Bernoulli log-density is 1-Lipschitz in each logit and the roundings are
    independent, so the summed loss moves by less than that bound: it must agree within 0.2%
    (measured: 1.5e-5 relative), the gradient in direction (cosine > 0.999) and norm (1%) -- and
    must differ at all, or autocast did not run."""
    data = load_dataset("digits", binarize="threshold")
    torch.manual_seed(0)
    vae = pyrovae.VAE(data.event_shape, 4, likelihood="bernoulli", encoder=SMALL, decoder=SMALL)
    trainer = Trainer(vae, data, TrainConfig(estimator=estimator, batch_size=100), {"name": "adam", "lr": 1e-3})
    batch, noise = trainer.minibatch(torch.arange(100))
    full, full_grad = step_loss(trainer, batch, noise, "32")
    half, half_grad = step_loss(trainer, batch, noise, "bf16-mixed")
    assert half.dtype == torch.float32  # the ELBO is summed in float32
    assert half != full  # the networks did run in bfloat16
    assert half.item() == pytest.approx(full.item(), rel=2e-3)
    cosine = torch.nn.functional.cosine_similarity(half_grad, full_grad, dim=0)
    assert cosine > 0.999 and half_grad.norm() == pytest.approx(full_grad.norm().item(), rel=0.01)


def test_the_networks_compute_in_bfloat16_and_hand_float32_on():
    vae = pyrovae.VAE((64,), 4, encoder=SMALL, decoder=SMALL)
    inner = []
    vae.encoder.net[0].register_forward_hook(lambda m, a, out: inner.append(out.dtype))
    assert [type(m).__name__ for m in networks(vae)] == ["StandardNormalPrior", "BernoulliLikelihood", "MLPEncoder",
                                                         "MLPDecoder", "GaussianPosterior"]
    with float32_outputs(vae), torch.autocast("cpu", dtype=torch.bfloat16):
        loc, log_var = vae.encoder(torch.rand(5, 64))
    assert inner == [torch.bfloat16] and loc.dtype == log_var.dtype == torch.float32
    assert all(not m._forward_hooks for m in networks(vae))  # removed after the block


def test_bf16_mixed_trains_to_the_float32_test_elbo(tmp_path):
    """The issue's bar, on a short run: within 0.5 nats of float32 (benchmarks/throughput.py
    --precision and the docs give the full default's numbers)."""
    elbos = {}
    for precision in ("32", "bf16-mixed"):
        data = load_dataset("digits")
        torch.manual_seed(0)
        vae = pyrovae.VAE(data.event_shape, 4, encoder=SMALL, decoder=SMALL)
        metrics = pyrovae.fit(vae, data, epochs=8, eval_every=8, progress=False, precision=precision)
        elbos[precision] = metrics[-1]["test_elbo"]
        assert not any(m._forward_hooks for m in vae.modules())  # nothing left on the user's model
    assert elbos["bf16-mixed"] == pytest.approx(elbos["32"], abs=0.5)


def test_a_bf16_run_resumes_bit_for_bit(tmp_path):
    assert main(["train", "--out", str(tmp_path / "float32"), "--set", "train.precision=32", "--set",
                 "train.max_steps=1", "-q"]) == 0  # the number 32 is "32"
    assert 'precision = "32"' in (tmp_path / "float32" / "config.toml").read_text()
    sets = ["--set", "train.precision=bf16-mixed", "--set", "model.encoder.hidden=[32]", "--set",
            "model.decoder.hidden=[32]", "--set", "train.eval_every=1", "-q"]
    assert main(["train", "--out", str(tmp_path / "straight"), "--set", "train.epochs=2", *sets]) == 0
    assert main(["train", "--out", str(tmp_path / "cut"), "--set", "train.epochs=1", *sets]) == 0
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume", "--set", "train.epochs=2", *sets]) == 0
    a, b = (pyrovae.load(tmp_path / run) for run in ("straight", "cut"))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("value, pattern", [
    ("'16-mixed'", "train.precision = '16-mixed': float16 autocast with a gradient scaler needs a CUDA device"),
    ("'64'", "train.precision = '64': valid: 32, bf16-mixed, 16-mixed"),
    ("16", "train.precision = 16: valid: 32, bf16-mixed, 16-mixed"),
])
def test_a_precision_that_cannot_run_is_one_line(tmp_path, capsys, value, pattern):
    code = main(["train", "--out", str(tmp_path / "run"), "--set", f"train.precision={value}"])
    one_line_error(capsys, code, pattern)
    assert not (tmp_path / "run").exists()
