"""Priors p(z) over the latent code, found by name.

A prior is an ``nn.Module`` (it may own learned parameters) whose call returns a Pyro
distribution with event shape ``(latent_dim,)``. ``has_analytic_kl`` says whether
KL(q(z|x) || p(z)) against the diagonal-Gaussian guide has a closed form, which is what the
``auto`` estimator needs to pick the paper's estimator B (``TraceMeanField_ELBO``).

Registered names: ``standard_normal``, ``gaussian``, ``mixture``.
"""

import math

import pyro.distributions as dist
import torch
from torch import nn

from .registry import Registry

PRIORS = Registry("prior", context=("latent_dim",))


class Prior(nn.Module):
    """Base class: ``prior(batch_shape)`` returns p(z) with event shape ``(latent_dim,)``."""

    has_analytic_kl = False

    def __init__(self, latent_dim: int):
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim

    def distribution(self) -> dist.TorchDistribution:
        raise NotImplementedError

    def forward(self, batch_shape=()) -> dist.TorchDistribution:
        d = self.distribution()
        return d.expand(torch.Size(batch_shape)) if batch_shape else d


@PRIORS.register("standard_normal")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I), the paper's prior. KL against a diagonal Gaussian q is, per datapoint,

    KL = 1/2 * sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)   (Kingma & Welling 2014, App. B).
    """

    has_analytic_kl = True

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def distribution(self):
        return dist.Normal(self.loc, self.scale).to_event(1)


@PRIORS.register("gaussian")
class GaussianPrior(Prior):
    """p(z) = N(m, diag(s^2)) with m and log s learned (initialised at N(0, I)).

    The KL between two diagonal Gaussians has a closed form, so estimator B applies.
    """

    has_analytic_kl = True

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def distribution(self):
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1)


@PRIORS.register("mixture")
class MixturePrior(Prior):
    """p(z) = sum_k pi_k N(z; m_k, diag(s_k^2)), a learned mixture of K diagonal Gaussians.

    Weights, means and scales are learned; means start spread as N(0, spread^2 I) so the
    components differ. The KL against q has no closed form: ``auto`` uses estimator A.

    :param int num_components: K.
    :param float spread: standard deviation of the initial component means.
    """

    def __init__(self, latent_dim: int, num_components: int = 10, spread: float = 1.0):
        super().__init__(latent_dim)
        if num_components < 1:
            raise ValueError(f"num_components must be >= 1, got {num_components}")
        if spread < 0:
            raise ValueError(f"spread must be >= 0, got {spread}")
        self.num_components = num_components
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(spread * torch.randn(num_components, latent_dim))
        # Each component starts narrower than N(0, I) so that the mixture's spread is about 1.
        init_log_scale = -0.5 * math.log1p(spread**2)
        self.log_scales = nn.Parameter(torch.full((num_components, latent_dim), init_log_scale))

    def distribution(self):
        components = dist.Normal(self.locs, self.log_scales.exp()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)
