"""A user's own model in Pyro primitives with no guide: pyrovae builds an amortized one.

    [plugins]
    modules = ["plugins/ink_vae.py"]      # relative to the config file

    [model]
    family = "ink_vae"

The model: a shape code z_i ~ N(0, I), an ink level s_i ~ LogNormal(0, 0.5) per image (a
positive latent), a per-pixel bias b ~ N(0, I) shared by all images (a global latent), and
x_i ~ Bernoulli(logits = s_i * decoder(z_i) + b). There is no ``guide``: pyrovae traces the
model, finds z and s inside the plate "data" and gives them q(z_i, s_i | x_i) from one encoder
(s through exp, its support's bijection), and gives b a mean-field Normal.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyrovae


@pyrovae.MODELS.register("ink_vae")
class InkVAE(pyrovae.Model):
    """z ~ N(0, I), s ~ LogNormal(0, 0.5) per image, b ~ N(0, I) per pixel (global),
    x ~ Bernoulli(s * decoder(z) + b). No guide: an :class:`~pyrovae.AmortizedGuide` is built.

    :param int latent_dim: the dimension of z.
    :param list hidden: the decoder's (and the built encoder's) hidden layer sizes.
    """

    def __init__(self, event_shape, latent_dim: int = 2, hidden: list = (256,), name: str = ""):
        super().__init__(event_shape, name)
        self.latent_dim = latent_dim
        pixels = 1
        for s in event_shape:
            pixels *= s
        sizes = [latent_dim, *hidden, pixels]
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
        self.decoder = nn.Sequential(*layers, nn.Unflatten(-1, tuple(event_shape)))
        self.guide_encoder = {"name": "mlp", "hidden": list(hidden)}  # the built guide's network

    def model(self, batch, num_data=None):
        x = batch.x
        bias = pyro.sample("bias", dist.Normal(torch.zeros_like(x[0]), 1.0).to_event(x.dim() - 1))
        with pyro.plate("data", num_data or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            ink = pyro.sample("ink", dist.LogNormal(x.new_zeros(()), 0.5))
            logits = ink.reshape(ink.shape + (1,) * (x.dim() - 1)) * self.decoder(z) + bias
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(x.dim() - 1), obs=x)
