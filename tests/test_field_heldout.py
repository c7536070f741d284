"""The field's data and a held-out check of its pipeline on the real files: the static MNIST loader
reads the three standard files exactly, and a shipped config, trained for two epochs, scores
the same test NLL under pyrovae's evaluation as under an independent one written here from the
trained weights and torch's own distributions."""

import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import pyrovae

ROOT = Path(__file__).resolve().parents[1]
STATIC_MNIST = ROOT.parent / "shared" / "data" / "static_mnist"
pytestmark = pytest.mark.skipif(not STATIC_MNIST.is_dir(), reason="needs ../shared/data/static_mnist")


@pytest.fixture(scope="module")
def static_mnist():
    return pyrovae.load_dataset("static_mnist", path=str(STATIC_MNIST), download=False)


def test_static_mnist_reads_the_three_standard_files_exactly(static_mnist):
    """Larochelle's fixed binarization: 50000 / 10000 / 10000 images, their pixel sums as published
    with the files, the validation file as the validation split, no binarization on top."""
    data = static_mnist
    assert (data.num_train, len(data.validation_split), len(data.test)) == (50_000, 10_000, 10_000)
    assert data.event_shape == (1, 28, 28) and data.binarize == "none"
    train = data.train_points(torch.arange(data.num_train))
    validation = data.validation_split[:]
    assert (int(train.sum()), int(validation.sum()), int(data.test.sum())) == (5_118_041, 1_028_036, 1_038_896)
    assert set(torch.unique(train).tolist()) == {0.0, 1.0}


def _independent_log_likelihood(state, x, k, generator):
    """log (1/k) sum_j p(x | z_j) p(z_j) / q(z_j | x), z_j ~ q(z | x), from the weights alone: the
    gated layers, hardtanh(log sigma^2, -6, 2), N(0, I) and torch's Bernoulli, none of pyrovae's code."""
    def gated(h, prefix):
        return F.linear(h, state[f"{prefix}.h.weight"], state[f"{prefix}.h.bias"]) * torch.sigmoid(
            F.linear(h, state[f"{prefix}.g.weight"], state[f"{prefix}.g.bias"]))

    h = gated(gated(x.flatten(1), "encoder.net.0"), "encoder.net.1")
    loc, log_var = F.linear(h, state["encoder.net.2.weight"], state["encoder.net.2.bias"]).chunk(2, -1)
    scale = (0.5 * log_var.clamp(-6, 2)).exp()
    q = torch.distributions.Normal(loc, scale)
    z = q.sample((k,)) if generator is None else loc + scale * torch.randn((k, *loc.shape), generator=generator)
    g = gated(gated(z, "decoder.net.0"), "decoder.net.1")
    logits = F.linear(g, state["decoder.net.2.weight"], state["decoder.net.2.bias"])
    log_px = torch.distributions.Bernoulli(logits=logits).log_prob(x.flatten(1)).sum(-1)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_w = log_px + log_pz - q.log_prob(z).sum(-1)
    return torch.logsumexp(log_w, 0) - math.log(k)


def test_a_shipped_config_trained_for_two_epochs_scores_the_same_nll_under_an_independent_evaluation(
        static_mnist):
    config = pyrovae.load_config(str(ROOT / "examples" / "configs" / "field" / "vae_static_mnist.toml"),
                                 [f"data.path={STATIC_MNIST}"])
    data = static_mnist
    part = pyrovae.Dataset("static_mnist", data.train_points(torch.arange(10_000)), data.test, "none",
                           validation=data.validation_split[:2000])  # 10,000 training images, 2 epochs
    model = pyrovae.build_model(config.model, data.event_shape)
    torch.manual_seed(0)
    metrics = pyrovae.fit(model, part, config.train, config.optim, epochs=2, progress=False, num_threads=1)
    assert metrics[-1]["beta"] == pytest.approx(0.02) and metrics[-1]["validation_elbo"] > -300

    x = data.test[:100]
    with torch.no_grad():
        ours = pyrovae.log_likelihood(model, x, num_samples=500)
        theirs = _independent_log_likelihood(model.state_dict(), x, 500, torch.Generator().manual_seed(1))
    difference = ours - theirs  # two independent estimates of the same log p(x_i), point by point
    standard_error = difference.std() / math.sqrt(len(x))
    assert abs(float(difference.mean())) < 5 * float(standard_error) + 1e-3, (difference.mean(), standard_error)
    assert 100 < -float(ours.mean()) < 450  # trained, if briefly: a decoder at chance scores 784 log 2 = 543
