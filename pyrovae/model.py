"""The VAE: a Pyro ``model`` and ``guide`` that serve every prior, likelihood and network.

Kingma & Welling, "Auto-Encoding Variational Bayes" (2014):

- model:  z_i ~ p(z),  x_i ~ p_theta(x | z_i)  for i in the minibatch;
- guide:  z_i ~ q_phi(z | x_i) = N(mu(x_i), diag(sigma^2(x_i))), the encoder emitting mu and
  zeta = log sigma^2, so that z = mu + sigma * eps with eps ~ N(0, I) (reparameterization).

Both run under ``pyro.plate("data", size=N, subsample=...)`` with the minibatch as the
subsample: each log-probability is scaled by N/M, so any Pyro ELBO of a minibatch of M points
is an unbiased estimate of the ELBO of all N points (the paper's estimator, eq. 8).
"""

from typing import Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method
from torch import nn

from .likelihoods import LIKELIHOODS, Likelihood
from .nets import DECODERS, ENCODERS
from .priors import PRIORS, Prior
from .registry import Spec


class VAE(PyroModule):
    """A variational autoencoder as a Pyro model and guide.

    :param tuple event_shape: the shape of one data point, e.g. ``(1, 28, 28)`` or ``(64,)``.
    :param int latent_dim: the dimension of z.
    :param prior: a registered prior name or spec (``"standard_normal"``, ``"gaussian"``,
        ``{"name": "mixture", "num_components": 10}``), or a :class:`~pyrovae.priors.Prior`.
    :param likelihood: a registered likelihood name or spec (``"bernoulli"``,
        ``{"name": "gaussian", "scale": 1.0}``, ...), or a :class:`~pyrovae.likelihoods.Likelihood`.
    :param encoder: a network spec (``"mlp"``, ``{"name": "mlp", "hidden": [500]}``, ``"conv"``)
        or an ``nn.Module`` mapping x to ``(loc, log_var)``.
    :param decoder: a network spec or an ``nn.Module`` mapping z to
        ``(..., likelihood.num_params, *event_shape)``.
    :param str name: the Pyro name prefix of the parameters (give two VAEs trained by plain
        SVI in one process different names).

    Example with plain Pyro::

        vae = VAE((64,), latent_dim=2, prior="mixture", likelihood="bernoulli")
        svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}),
                             pyro.infer.TraceMeanField_ELBO())
        svi.step(x_batch, num_data=N)
    """

    def __init__(self, event_shape: Sequence[int], latent_dim: int = 2,
                 prior: Union[Spec, Prior] = "standard_normal",
                 likelihood: Union[Spec, Likelihood] = "bernoulli",
                 encoder: Union[Spec, nn.Module] = "mlp", decoder: Union[Spec, nn.Module] = "mlp",
                 name: str = ""):
        super().__init__(name)
        self.event_shape = tuple(int(s) for s in event_shape)
        self.event_dim = len(self.event_shape)
        self.latent_dim = int(latent_dim)
        self.prior = prior if isinstance(prior, nn.Module) else \
            PRIORS.build(prior, "model.prior", latent_dim=self.latent_dim)
        self.likelihood = likelihood if isinstance(likelihood, nn.Module) else \
            LIKELIHOODS.build(likelihood, "model.likelihood")
        self.encoder = encoder if isinstance(encoder, nn.Module) else \
            ENCODERS.build(encoder, "model.encoder", event_shape=self.event_shape, latent_dim=self.latent_dim)
        self.decoder = decoder if isinstance(decoder, nn.Module) else \
            DECODERS.build(decoder, "model.decoder", event_shape=self.event_shape, latent_dim=self.latent_dim,
                           num_params=self.likelihood.num_params)
        if hasattr(self.prior, "attach"):  # e.g. the VampPrior, which runs the encoder on its pseudo-inputs
            self.prior.attach(self.encoder, self.event_shape)
        #: beta, the weight of the KL term (log q(z|x) - log p(z)); 1 is the ELBO. Set by KL annealing.
        self.kl_weight = 1.0

    # -- the Pyro program ---------------------------------------------------------------
    def _plate(self, x: torch.Tensor, num_data: Optional[int]):
        size = x.shape[0]
        # Passing the subsample indices (rather than subsample_size) avoids a randperm(N) per
        # step; the plate's scale is num_data / size either way.
        return pyro.plate("data", size=num_data or size, subsample=torch.arange(size, device=x.device))

    @pyro_method
    def model(self, x: torch.Tensor, num_data: Optional[int] = None):
        """p(z) p_theta(x|z) for a minibatch x of shape ``(M, *event_shape)`` out of ``num_data``."""
        with self._plate(x, num_data):
            z = self._sample_latent(self.prior((x.shape[0],)))
            pyro.sample("x", self.likelihood(self.decode(z), self.event_dim), obs=x)

    @pyro_method
    def guide(self, x: torch.Tensor, num_data: Optional[int] = None):
        """q_phi(z|x) = N(mu(x), diag(exp(zeta(x)))), zeta = log sigma^2, under the same plate."""
        with self._plate(x, num_data):
            self._sample_latent(self.posterior(x))

    def _sample_latent(self, fn):
        # poutine.scale on the latent site in model and guide multiplies log p(z) - log q(z|x),
        # i.e. the KL term, by beta (Higgins et al. 2017); the reconstruction term is untouched.
        if self.kl_weight == 1.0:
            return pyro.sample("z", fn)
        # beta = 0 (a plain autoencoder with noise) masks the terms out: Pyro's scale must be > 0
        weight = poutine.mask(mask=False) if self.kl_weight == 0 else poutine.scale(scale=self.kl_weight)
        with weight:
            return pyro.sample("z", fn)

    # -- plain-tensor helpers (no Pyro effects) --------------------------------------------
    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q_phi(z|x) as a distribution with batch shape ``(M,)`` and event shape ``(latent_dim,)``."""
        loc, log_var = self.encoder(x)
        return dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)

    def decode(self, z: torch.Tensor) -> tuple:
        """The likelihood's parameters for codes z of shape ``(..., latent_dim)``: a tuple of
        ``num_params`` tensors of shape ``(..., *event_shape)``."""
        out = self.decoder(z)
        if out.shape[-self.event_dim - 1] == 1:  # a view, whose backward copies nothing (unbind's stacks)
            return (out.squeeze(-self.event_dim - 1),)
        return out.unbind(-self.event_dim - 1)

    def likelihood_dist(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p_theta(x|z) with the data's event shape."""
        return self.likelihood(self.decode(z), self.event_dim)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = mu(x)]: the decoder's mean at the encoder's mean."""
        return self.likelihood.mean(self.decode(self.encoder(x)[0]))

    @torch.no_grad()
    def sample(self, num_samples: int, mean: bool = True) -> torch.Tensor:
        """Draw z ~ p(z) and return E[x|z] (``mean=True``) or a sample x ~ p(x|z)."""
        z = self.prior().sample((num_samples,))
        return self.likelihood.mean(self.decode(z)) if mean else self.likelihood_dist(z).sample()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
