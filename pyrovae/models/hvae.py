"""The ``hvae`` family: a VAE with two stochastic layers, z2 -> z1 -> x (Burda, Grosse &
Salakhutdinov, "Importance Weighted Autoencoders", 2016, Sec. 5; the architecture of their
two-layer MNIST models).

- model:  z2 ~ p(z2) (the prior, any registered one),  z1 ~ N(mu(z2), diag sigma^2(z2)),
  x ~ p_theta(x | z1) (the likelihood);
- guide:  z1 ~ q(z1 | x),  z2 ~ q(z2 | z1), each a diagonal Gaussian (or the configured
  posterior, e.g. ``iaf``).

The networks are Burda et al.'s, tanh: ``encoder`` x -> z1 and ``decoder`` z1 -> x have two
hidden layers of 200 units, ``encoder2`` z1 -> z2 and ``decoder2`` z2 -> z1 two of 100. Their
MNIST model has z1 of 100 and z2 of 50 dimensions (784-200-200-100-100-100-50:
``latent_dim = 100, latent_dim2 = 50``); the defaults are 10 and 5, which train on small data
too: on the embedded 8x8 digits, 30 epochs, 100 and 50 leave 0 of 150 units active from epoch 10
to 25 (test ELBO -27.01 at epoch 30), while 10 and 5 keep all 15 active and reach -24.32, above
the one-layer ``vae`` (-24.68). ``encoder``/``decoder`` are any registered networks (as in ``vae``);
``encoder2`` and ``decoder2`` map a vector to a diagonal Gaussian, so they are registered
encoders (``mlp``). Every term comes from the traces (:meth:`pyrovae.Model.terms`); ``mc`` and
``iwae`` apply. KL(q(z2 | z1) || p(z2)) is closed-form at the sampled z1 (a Gaussian prior), but
z1's term is not: p(z1 | z2) depends on z2, which this bottom-up guide draws given z1, so the
Gaussian closed form at that z2 would be biased; it takes log q - log p, and ``analytic`` is
refused.
"""

from typing import Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.data.batch import as_batch
from pyrovae.models.base import Model
from pyrovae.models.registry import MODELS
from pyrovae.parts.likelihoods import LIKELIHOODS, Likelihood
from pyrovae.parts.nets import DECODERS, ENCODERS
from pyrovae.parts.posteriors import POSTERIORS
from pyrovae.parts.priors import PRIORS, Prior
from pyrovae.registry import Spec


def part(registry, spec, where: str, **context) -> nn.Module:
    """A module given as it is, or the registered part a spec names, built with ``context``."""
    return spec if isinstance(spec, nn.Module) else registry.build(spec, where, **context)


class TwoStochasticLayers(Model):
    """The generative model p(z2) p(z1 | z2) p(x | ...) of the two-layer families: z2 from the prior,
    z1 ~ N(mu(z2), diag sigma^2(z2)) through ``decoder2``, x from :meth:`x_given` (what the family's
    decoder reads: ``hvae`` z1, ``two_level_vae`` z1 and z2). A family sets ``prior`` and
    ``decoder2`` and writes its guide."""

    def model(self, batch, num_data: Optional[int] = None):
        """p(z2) p(z1 | z2) p_theta(x | ...) under the plate "data"."""
        batch = as_batch(batch)
        x = batch.x  # None: drawn from the prior (Batch.without_data)
        with self.data_plate(batch, num_data):
            z2 = pyro.sample("z2", self.prior((len(batch),)))
            loc, log_var = self.decoder2(z2)
            z1 = pyro.sample("z1", dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1))
            pyro.sample("x", self.x_given(z1, z2, batch=x), obs=x)

    def x_given(self, z1: torch.Tensor, z2: torch.Tensor, batch=None) -> dist.TorchDistribution:
        raise NotImplementedError


_TANH_200 = {"name": "mlp", "hidden": [200, 200], "activation": "tanh"}
_TANH_100 = {"name": "mlp", "hidden": [100, 100], "activation": "tanh"}


@MODELS.register("hvae")
class HVAE(TwoStochasticLayers):
    """Two stochastic layers, z2 -> z1 -> x (see the module docstring).

    :param tuple event_shape: the shape of one data point.
    :param int latent_dim: the dimension of z1 (the layer next to the data).
    :param int latent_dim2: the dimension of z2 (the top layer).
    :param prior: the prior p(z2), a registered prior spec or a Prior.
    :param likelihood: p(x | z1), a registered likelihood spec or a Likelihood.
    :param encoder: x -> (loc, log_var) of q(z1 | x), a registered encoder spec or a module.
    :param decoder: z1 -> the likelihood's parameters, a registered decoder spec or a module.
    :param encoder2: z1 -> (loc, log_var) of q(z2 | z1), a registered encoder spec or a module.
    :param decoder2: z2 -> (loc, log_var) of p(z1 | z2), a registered encoder spec or a module.
    :param posterior: the posterior family of each guide layer (``gaussian``, ``iaf``).
    """

    vectorizable = True  # its programs broadcast over a particle plate (Pyro's vectorize_particles)

    plate_nesting = 1
    config_defaults = {"encoder": _TANH_200, "decoder": _TANH_200, "encoder2": _TANH_100, "decoder2": _TANH_100}

    def __init__(self, event_shape: Sequence[int], latent_dim: int = 10, latent_dim2: int = 5,
                 prior: Union[Spec, Prior] = "standard_normal",
                 likelihood: Union[Spec, Likelihood] = "bernoulli",
                 encoder: Union[Spec, nn.Module] = _TANH_200, decoder: Union[Spec, nn.Module] = _TANH_200,
                 encoder2: Union[Spec, nn.Module] = _TANH_100, decoder2: Union[Spec, nn.Module] = _TANH_100,
                 posterior: Union[Spec, nn.Module] = "gaussian", name: str = ""):
        super().__init__(event_shape, name)
        if int(latent_dim) < 1 or int(latent_dim2) < 1:
            raise ValueError(f"latent_dim and latent_dim2 must be >= 1, got {latent_dim} and {latent_dim2}")
        self.latent_dim, self.latent_dim2 = int(latent_dim), int(latent_dim2)

        self.prior = part(PRIORS, prior, "model.prior", latent_dim=self.latent_dim2)
        self.likelihood = part(LIKELIHOODS, likelihood, "model.likelihood", event_shape=self.event_shape)
        self.encoder = part(ENCODERS, encoder, "model.encoder", event_shape=self.event_shape,
                             latent_dim=self.latent_dim)
        self.decoder = part(DECODERS, decoder, "model.decoder", event_shape=self.event_shape,
                             latent_dim=self.latent_dim, num_params=self.likelihood.num_params)
        self.encoder2 = part(ENCODERS, encoder2, "model.encoder2", event_shape=(self.latent_dim,),
                              latent_dim=self.latent_dim2)
        self.decoder2 = part(ENCODERS, decoder2, "model.decoder2", event_shape=(self.latent_dim2,),
                              latent_dim=self.latent_dim)
        self.posterior1 = part(POSTERIORS, posterior, "model.posterior", latent_dim=self.latent_dim)
        self.posterior2 = part(POSTERIORS, posterior, "model.posterior", latent_dim=self.latent_dim2)
        if hasattr(self.prior, "attach"):  # the VampPrior runs an encoder on its pseudo-inputs: here z1 -> z2
            self.prior.attach(self.encoder2, (self.latent_dim,))

    def guide(self, batch, num_data: Optional[int] = None):
        """q(z1 | x) q(z2 | z1) under the same plate."""
        x = as_batch(batch).x
        with self.data_plate(x, num_data):
            z1 = pyro.sample("z1", self.posterior1(*self.encoder(x)))
            pyro.sample("z2", self.posterior2(*self.encoder2(z1)))

    def x_given(self, z1, z2, batch=None):
        return self.likelihood_dist(z1, batch)

    def likelihood_dist(self, z1: torch.Tensor, batch=None) -> dist.TorchDistribution:
        """p_theta(x | z1) (for the points of ``batch`` if given) with the data's event shape."""
        params = self.likelihood.given(self.decoder(z1).unbind(-self.event_dim - 1), batch)
        return self.likelihood(params, self.event_dim)

    def check_data(self, x: torch.Tensor, where: str = "data") -> None:
        self.likelihood.check_data(x, where)
