"""Training: the ELBO rises, metrics are recorded, resume is exact, bad settings are refused."""

import json

import pytest
import torch

from pyrovae import VAE, Config, ConfigError, fit, load, load_dataset, train
from pyrovae.app.checkpoint import read_checkpoint

SMALL = {"name": "mlp", "hidden": [64]}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_fit_raises_the_test_elbo(digits):
    vae = VAE(digits.event_shape, 2, encoder=SMALL, decoder=SMALL)
    metrics = fit(vae, digits, epochs=6, batch_size=50, eval_every=1, progress=False,
                  optim={"name": "adam", "lr": 3e-3})
    assert [m["epoch"] for m in metrics] == list(range(1, 7))
    assert metrics[-1]["samples_seen"] == 6 * digits.num_train
    assert metrics[-1]["step"] == 6 * -(-digits.num_train // 50)
    assert metrics[-1]["test_elbo"] > metrics[0]["test_elbo"] + 3
    assert metrics[-1]["train_elbo"] > metrics[0]["train_elbo"]
    assert all(m["images_per_second"] > 0 and m["train_seconds"] > 0 for m in metrics)
    assert all(m["test_elbo"] < 0 for m in metrics)  # a log-probability of binary data


@pytest.mark.parametrize("prior, estimator, optim", [
    ({"name": "mixture", "num_components": 3}, "mc", {"name": "adagrad", "lr": 0.05}),
    ("gaussian", "analytic", {"name": "rmsprop", "lr": 1e-3}),
    ("standard_normal", "mc", {"name": "clipped_adam", "lr": 3e-3, "weight_decay": 1e-4}),
])
def test_fit_with_other_priors_estimators_optimizers(digits, prior, estimator, optim):
    vae = VAE(digits.event_shape, 2, prior=prior, encoder=SMALL, decoder=SMALL)
    metrics = fit(vae, digits, epochs=3, estimator=estimator, num_particles=3, eval_every=1, progress=False,
                  optim=optim)
    assert metrics[-1]["test_elbo"] > metrics[0]["test_elbo"] - 1.0
    assert all(torch.isfinite(p).all() for p in vae.parameters())


def test_evaluation_does_not_disturb_training(digits):
    """Evaluating every epoch or only at the end gives the same parameters."""
    states = []
    for eval_every in (1, 3):
        torch.manual_seed(0)
        vae = VAE(digits.event_shape, 2, encoder=SMALL, decoder=SMALL)
        fit(vae, digits, epochs=3, eval_every=eval_every, progress=False, seed=5)
        states.append(vae.state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=0)


def test_resume_is_exact(tmp_path):
    config = Config()
    config.model.encoder = config.model.decoder = SMALL
    config.train.progress = False
    config.train.epochs = 4
    straight = train(config, tmp_path / "straight")

    config.train.epochs = 2
    half = train(config, tmp_path / "resumed")
    assert read_checkpoint(half / "checkpoint.pt")["counters"]["epoch"] == 2
    config.train.epochs = 4
    train(config, half, resume=True)

    a, b = read_checkpoint(straight / "checkpoint.pt"), read_checkpoint(half / "checkpoint.pt")
    assert a["counters"] == b["counters"]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    lines = (half / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert lines[-1].split('"test_elbo"')[1][:12] == (straight / "metrics.jsonl").read_text().splitlines()[-1].split(
        '"test_elbo"')[1][:12]
    vae = load(half)
    assert vae.device.type == "cpu" and vae.sample(3).shape == (3, 1, 8, 8)


def test_refused_settings(digits):
    vae = VAE(digits.event_shape, 2)
    with pytest.raises(ConfigError, match="batch_size = 5000: larger than the training split"):
        fit(vae, digits, epochs=1, batch_size=5000)
    with pytest.raises(ConfigError, match="fit: .*unexpected keyword argument 'epoch'"):
        fit(vae, digits, epoch=1)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            fit(vae, digits, epochs=1, device="cuda")


def test_bernoulli_on_grey_levels_is_refused_before_training(digits):
    grey = load_dataset("digits", binarize="none")
    with pytest.raises(Exception, match="binarize.*continuous_bernoulli"):
        fit(VAE(grey.event_shape, 2), grey, epochs=1, progress=False)
    metrics = fit(VAE(grey.event_shape, 2, likelihood="continuous_bernoulli"), grey, epochs=1, progress=False)
    assert metrics[0]["test_elbo"] is not None


def test_tensorboard_event_file_reads_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = Config()
    config.model.encoder = config.model.decoder = SMALL
    config.train.progress = False
    config.train.epochs = 3
    config.train.eval_every = 2
    config.log.tensorboard = True
    run = train(config, tmp_path / "run")
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tags = events.Tags()
    assert {"train/elbo", "test/elbo", "test/reconstruction", "test/kl", "train/learning_rate"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/elbo")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("test/elbo")] == [2, 3]
    for event, m in zip(events.Scalars("test/elbo"), [m for m in metrics if m["test_elbo"] is not None]):
        assert event.value == pytest.approx(m["test_elbo"], rel=1e-6)
        assert m["test_elbo"] == pytest.approx(m["test_reconstruction"] - m["test_kl"], abs=1e-6)
    assert {"samples", "reconstructions"} <= set(tags["images"])
    # logging draws its samples aside: the run's parameters are those of a run without it
    config.log.tensorboard = False
    plain = train(config, tmp_path / "plain")
    a, b = read_checkpoint(run / "checkpoint.pt"), read_checkpoint(plain / "checkpoint.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


def test_tensorboard_missing_is_a_config_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    config = Config()
    config.log.tensorboard = True
    with pytest.raises(ConfigError, match="needs the tensorboard package: pip install tensorboard"):
        config.check()
