"""A plugin: a Student-t prior and a model family with two latent sites whose decoder reads the
labels, written in a user's own file and named in a config:

    [plugins]
    modules = ["plugins/two_latents.py"]      # relative to the config file

    [model]
    family = "two_latents"
    prior = { name = "student_t", df = 3.0 }

Everything here is plain Pyro and PyTorch plus three pyrovae names: ``pyrovae.Prior`` and
``pyrovae.PRIORS`` for the prior, ``pyrovae.Model`` and ``pyrovae.MODELS`` for the family.
"""

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

import pyrovae


@pyrovae.PRIORS.register("student_t")
class StudentTPrior(pyrovae.Prior):
    """p(z) = prod_j StudentT(z_j; df, 0, 1): heavier tails than N(0, I); no closed-form KL
    against a Gaussian q, so ``auto`` picks the Monte Carlo estimator.

    :param float df: the degrees of freedom (> 0).
    """

    def __init__(self, latent_dim: int, df: float = 4.0):
        super().__init__(latent_dim)
        if df <= 0:
            raise ValueError(f"df must be > 0, got {df}")
        self.df = df
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def distribution(self):
        return dist.StudentT(self.df, self.loc, self.scale).to_event(1)


@pyrovae.MODELS.register("two_latents")
class TwoLatents(pyrovae.Model):
    """style ~ p(style) (any registered prior), content ~ N(0, I), x ~ Bernoulli(decoder(style,
    content, one_hot(y))); q(style | x) and q(content | x) are diagonal Gaussians from one encoder.

    :param int style_dim: the dimension of the style latent.
    :param int content_dim: the dimension of the content latent.
    :param prior: the style's prior, a registered prior name or table.
    :param int hidden: the width of the encoder's and the decoder's hidden layer.
    """

    def __init__(self, event_shape, num_classes: int, style_dim: int = 2, content_dim: int = 2,
                 prior="student_t", hidden: int = 64):
        super().__init__(event_shape)
        self.num_classes, self.style_dim, self.content_dim = num_classes, style_dim, content_dim
        size = math.prod(event_shape)
        self.prior = pyrovae.PRIORS.build(prior, "model.prior", latent_dim=style_dim)
        self.encoder = nn.Sequential(nn.Linear(size, hidden), nn.Tanh(),
                                     nn.Linear(hidden, 2 * (style_dim + content_dim)))
        self.decoder = nn.Sequential(nn.Linear(style_dim + content_dim + num_classes, hidden), nn.Tanh(),
                                     nn.Linear(hidden, size))

    def model(self, batch, num_data=None):
        x = batch.x.flatten(1)
        with self.data_plate(batch, num_data):
            style = pyro.sample("style", self.prior((x.shape[0],)))
            content = pyro.sample("content", dist.Normal(x.new_zeros(self.content_dim), 1.0).to_event(1))
            label = F.one_hot(batch.y, self.num_classes).to(x.dtype).expand(*style.shape[:-1], self.num_classes)
            logits = self.decoder(torch.cat([style, content, label], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, batch, num_data=None):
        x = batch.x.flatten(1)
        with self.data_plate(batch, num_data):
            loc, log_var = self.encoder(x).chunk(2, -1)
            scale = torch.exp(0.5 * log_var)
            split = [self.style_dim, self.content_dim]
            for name, mean, sd in zip(("style", "content"), loc.split(split, -1), scale.split(split, -1)):
                pyro.sample(name, dist.Normal(mean, sd).to_event(1))
