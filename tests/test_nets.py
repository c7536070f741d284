"""Encoder and decoder networks: shapes for every image size, leading dims, bad options."""

import math

import pytest
import torch

from pyrovae import DECODERS, ENCODERS, VAE, ConfigError


@pytest.mark.parametrize("event_shape", [(1, 8, 8), (1, 28, 20), (1, 28, 28), (3, 16, 16), (28, 20)])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_encoder_decoder_shapes(kind, event_shape):
    enc = ENCODERS.build(kind, event_shape=event_shape, latent_dim=5)
    dec = DECODERS.build(kind, event_shape=event_shape, latent_dim=5, num_params=2)
    loc, log_var = enc(torch.rand(7, *event_shape))
    assert loc.shape == log_var.shape == (7, 5)
    assert dec(torch.randn(3, 7, 5)).shape == (3, 7, 2, *event_shape)


def test_mlp_on_vectors_and_paper_init():
    enc = ENCODERS.build({"name": "mlp", "hidden": [500], "activation": "tanh", "init_std": 0.01},
                         event_shape=(10,), latent_dim=2)
    assert enc(torch.rand(4, 10))[0].shape == (4, 2)
    weights = torch.cat([p.flatten() for p in enc.parameters()])
    assert weights.std().item() == pytest.approx(0.01, rel=0.1)


def test_conv_needs_images():
    with pytest.raises(ConfigError, match="image data"):
        VAE((10,), 2, encoder="conv")


def test_bad_activation_and_sizes():
    with pytest.raises(ConfigError, match="unknown activation 'swish'; valid:"):
        ENCODERS.build({"name": "mlp", "activation": "swish"}, "model.encoder", event_shape=(4,), latent_dim=2)
    with pytest.raises(ConfigError, match="expected a list of integers"):
        ENCODERS.build({"name": "mlp", "hidden": 5}, "model.encoder", event_shape=(4,), latent_dim=2)
    with pytest.raises(ConfigError, match="hidden sizes must be >= 1"):
        DECODERS.build({"name": "mlp", "hidden": [0]}, event_shape=(4,), latent_dim=2, num_params=1)


def test_a_gated_mlp_is_the_vampprior_papers_network():
    """``activation = "gated"``: every hidden layer h = (W1 x + b1) * sigmoid(W2 x + b2), the last
    layer linear; a VAE with such an encoder and decoder trains a step."""
    import pyrovae
    from pyrovae.parts.nets import DECODERS, ENCODERS, GatedDense

    layer = GatedDense(5, 3)
    x = torch.randn(4, 5)
    torch.testing.assert_close(layer(x), (x @ layer.h.weight.T + layer.h.bias)
                               * torch.sigmoid(x @ layer.g.weight.T + layer.g.bias))
    encoder = ENCODERS.build({"name": "mlp", "hidden": [300, 300], "activation": "gated"}, event_shape=(1, 28, 28),
                             latent_dim=40)
    assert [type(m).__name__ for m in encoder.net] == ["GatedDense", "GatedDense", "Linear"]
    loc, log_var = encoder(torch.rand(2, 1, 28, 28))
    assert loc.shape == log_var.shape == (2, 40)
    decoder = DECODERS.build({"name": "mlp", "hidden": [300, 300], "activation": "gated"}, event_shape=(1, 28, 28),
                             latent_dim=40, num_params=1)
    assert decoder(torch.randn(3, 2, 40)).shape == (3, 2, 1, 1, 28, 28)
    vae = pyrovae.VAE((1, 8, 8), 4, encoder={"name": "mlp", "hidden": [30, 30], "activation": "gated"},
                      decoder={"name": "mlp", "hidden": [30, 30], "activation": "gated"})
    metrics = pyrovae.fit(vae, pyrovae.load_dataset("digits"), epochs=1, progress=False)
    assert math.isfinite(metrics[-1]["test_elbo"])
    with pytest.raises(ValueError, match="valid: elu, gated, leaky_relu"):
        ENCODERS.build({"name": "mlp", "activation": "gate"}, event_shape=(4,), latent_dim=2)
