"""The ``two_level_vae`` family: the two-level VAE of Tomczak & Welling, "VAE with a VampPrior"
(AISTATS 2018), Sec. 3 ("a new two-layered VAE") and their code (``jmtomczak/vae_vampprior``,
``models/HVAE_2level.py``).

- model:  z2 ~ p(z2) (the prior, any registered one: the paper's ``standard_normal`` or ``vamp``),
  z1 ~ p(z1 | z2) = N(mu(z2), diag sigma^2(z2)),  x ~ p_theta(x | z1, z2);
- guide:  z2 ~ q(z2 | x),  z1 ~ q(z1 | x, z2), each a diagonal Gaussian.

Unlike ``hvae`` (Burda et al.'s bottom-up guide, q(z1 | x) q(z2 | z1), and a decoder that sees
z1 only), both the decoder and q(z1 | .) read two inputs, and the top layer's posterior reads x
itself. So the VampPrior here is the paper's: p(z2) = (1/K) sum_k q(z2 | u_k), pseudo-inputs u_k in
the data's space passed through q(z2 | x)'s network.

The networks, as in the paper's MLP model (every layer ``hidden`` units, ``activation = "gated"``
giving :class:`~pyrovae.parts.nets.GatedDense` layers):

- ``encoder``: x -> (loc, log_var) of q(z2 | x), a registered encoder (two hidden layers);
- q(z1 | x, z2): x and z2 each through one hidden layer of their own, concatenated, one joint
  hidden layer, then (loc, log_var);
- ``decoder2``: z2 -> (loc, log_var) of p(z1 | z2), a registered encoder (two hidden layers);
- p(x | z1, z2): z1 and z2 each through one hidden layer, concatenated, one joint hidden layer,
  then the likelihood's parameters.

``log_var_range`` bounds the log-variance of q(z1 | x, z2), the one posterior network built here,
by the paper's hardtanh(-6, 2); ``encoder`` and ``decoder2`` take their own ``log_var_range``
(their defaults have the paper's). Every term comes from the traces (:meth:`pyrovae.Model.terms`): the paper's
single-sample estimate is ``mc``, and ``iwae`` applies. Because the guide draws z2 before z1, each
KL is closed-form at the sampled z2 with a Gaussian prior, KL(q(z2 | x) || p(z2)) and
KL(q(z1 | x, z2) || p(z1 | z2)), so ``analytic`` (estimator B) applies there too; the VampPrior's
KL has no closed form (``auto`` takes ``mc``).
"""

import math
from typing import List, Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyrovae.data.batch import as_batch
from pyrovae.models.hvae import TwoStochasticLayers, part
from pyrovae.models.registry import MODELS
from pyrovae.parts.likelihoods import LIKELIHOODS, Likelihood
from pyrovae.parts.nets import ENCODERS, TwoInputMLP, bounded, checked_range
from pyrovae.parts.posteriors import POSTERIORS
from pyrovae.parts.priors import PRIORS, Prior
from pyrovae.registry import Spec

_PAPER_RANGE = [-6.0, 2.0]
_GATED_300 = {"name": "mlp", "hidden": [300, 300], "activation": "gated", "log_var_range": _PAPER_RANGE}


@MODELS.register("two_level_vae")
class TwoLevelVAE(TwoStochasticLayers):
    """Tomczak & Welling's two-level VAE (see the module docstring).

    :param tuple event_shape: the shape of one data point.
    :param int latent_dim: the dimension of z1 (the layer next to the data; the paper: 40).
    :param int latent_dim2: the dimension of z2 (the top layer; the paper: 40).
    :param prior: p(z2), a registered prior spec or a Prior (``vamp`` reads q(z2 | x)'s network).
    :param likelihood: p(x | z1, z2), a registered likelihood spec or a Likelihood.
    :param encoder: x -> (loc, log_var) of q(z2 | x), a registered encoder spec or a module.
    :param decoder2: z2 -> (loc, log_var) of p(z1 | z2), a registered encoder spec or a module.
    :param int hidden: the width of every layer of q(z1 | x, z2) and p(x | z1, z2) (the paper: 300).
    :param str activation: their non-linearity (``gated``, the paper's, or an MLP activation).
    :param list log_var_range: ``[low, high]`` for q(z1 | x, z2)'s log-variance (the paper: [-6, 2]);
        None: unbounded.
    :param posterior: the posterior family of each guide layer (``gaussian``, ``iaf``).
    """

    vectorizable = True  # its programs broadcast over a particle plate (Pyro's vectorize_particles)
    plate_nesting = 1
    config_defaults = {"encoder": _GATED_300, "decoder2": _GATED_300}

    def __init__(self, event_shape: Sequence[int], latent_dim: int = 40, latent_dim2: int = 40,
                 prior: Union[Spec, Prior] = "standard_normal", likelihood: Union[Spec, Likelihood] = "bernoulli",
                 encoder: Union[Spec, nn.Module] = _GATED_300, decoder2: Union[Spec, nn.Module] = _GATED_300,
                 hidden: int = 300, activation: str = "gated", log_var_range: Optional[List[float]] = _PAPER_RANGE,
                 posterior: Union[Spec, nn.Module] = "gaussian", name: str = ""):
        super().__init__(event_shape, name)
        if int(latent_dim) < 1 or int(latent_dim2) < 1:
            raise ValueError(f"latent_dim and latent_dim2 must be >= 1, got {latent_dim} and {latent_dim2}")
        if int(hidden) < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.latent_dim, self.latent_dim2 = int(latent_dim), int(latent_dim2)
        self.log_var_range = checked_range("log_var_range", log_var_range)

        data_size = math.prod(self.event_shape)
        self.prior = part(PRIORS, prior, "model.prior", latent_dim=self.latent_dim2)
        self.likelihood = part(LIKELIHOODS, likelihood, "model.likelihood", event_shape=self.event_shape)
        self.encoder = part(ENCODERS, encoder, "model.encoder", event_shape=self.event_shape,
                             latent_dim=self.latent_dim2)
        self.decoder2 = part(ENCODERS, decoder2, "model.decoder2", event_shape=(self.latent_dim2,),
                              latent_dim=self.latent_dim)
        self.encoder1 = TwoInputMLP((data_size, self.latent_dim2), int(hidden), 2 * self.latent_dim, activation)
        self.decoder = TwoInputMLP((self.latent_dim, self.latent_dim2), int(hidden),
                                   self.likelihood.num_params * data_size, activation)
        self.posterior1 = part(POSTERIORS, posterior, "model.posterior", latent_dim=self.latent_dim)
        self.posterior2 = part(POSTERIORS, posterior, "model.posterior", latent_dim=self.latent_dim2)
        if hasattr(self.prior, "attach"):  # the VampPrior: pseudo-inputs in x's space through q(z2 | x)'s network
            self.prior.attach(self.encoder, self.event_shape)

    def guide(self, batch, num_data: Optional[int] = None):
        """q(z2 | x) q(z1 | x, z2) under the same plate."""
        x = as_batch(batch).x
        with self.data_plate(x, num_data):
            z2 = pyro.sample("z2", self.posterior2(*self.encoder(x)))
            loc, log_var = self.encoder1(x.flatten(-self.event_dim), z2).chunk(2, dim=-1)
            pyro.sample("z1", self.posterior1(loc, bounded(log_var, self.log_var_range)))

    def x_given(self, z1, z2, batch=None):
        return self.likelihood_dist(z1, z2, batch)

    def likelihood_dist(self, z1: torch.Tensor, z2: torch.Tensor, batch=None) -> dist.TorchDistribution:
        """p_theta(x | z1, z2) (for the points of ``batch`` if given) with the data's event shape."""
        raw = self.decoder(z1, z2).unflatten(-1, (self.likelihood.num_params, *self.event_shape))
        params = self.likelihood.given(raw.unbind(-self.event_dim - 1), batch)
        return self.likelihood(params, self.event_dim)

    def check_data(self, x: torch.Tensor, where: str = "data") -> None:
        self.likelihood.check_data(x, where)
