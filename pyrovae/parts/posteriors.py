"""Posterior families by name (``[model] posterior``): what q_phi(z | x) is, given the encoder's output.

An encoder emits ``(loc, log_var)`` for x; a posterior turns them into a distribution over z
with batch shape ``(M,)`` and event shape ``(latent_dim,)``:

- ``gaussian`` (the default): q(z | x) = N(loc, diag(exp(log_var))), Kingma & Welling (2014);
  its KL from a Gaussian prior has a closed form (estimator B, ``analytic``).
- ``iaf``: inverse autoregressive flow (Kingma, Salimans, Jozefowicz, Chen, Sutskever &
  Welling, "Improving Variational Inference with Inverse Autoregressive Flow", 2016). Starting
  from z_0 = loc + sigma * eps, each of ``num_flows`` steps applies Pyro's stable
  ``ConditionalAffineAutoregressive`` transform

      z_t = sigmoid(s_t) * z_{t-1} + (1 - sigmoid(s_t)) * m_t,   (m_t, s_t) = AR-NN_t(z_{t-1}, h),

  where the autoregressive network (MADE, ``hidden`` units) sees the earlier coordinates of
  z_{t-1} and the context h, here the encoder's output ``(loc, log_var)``; every other step
  reverses the coordinate order. log q(z_T | x) = log N(z_0) - sum_t log |det dz_t/dz_{t-1}|
  is exact and cheap, so the ``mc`` and ``iwae`` estimators apply; the KL has no closed
  form, so ``analytic`` does not.

Register another with ``@pyrovae.POSTERIORS.register("name")``: a module built with
``latent_dim`` and its own options, called as ``posterior(loc, log_var)``.
"""

from typing import List, Optional

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from pyrovae.parts.priors import LOG_2PI
from pyrovae.registry import Registry

POSTERIORS = Registry("posterior", context=("latent_dim",))
"""Posteriors q(z | x) by name (``model.posterior``): modules from the encoder's ``(loc, log_var)``
to a distribution of z, built with ``latent_dim``: ``gaussian`` (the paper's) and ``iaf``.
"""


def reparameterized(loc: torch.Tensor, log_var: torch.Tensor, noise: Optional[torch.Tensor] = None,
                    num_particles: int = 1):
    """``(z, noise)``: z = mu + sigma * eps with sigma = exp(log_var / 2), eps ~ N(0, I) (the
    reparameterization, Kingma & Welling 2014, Sec. 2.4), ``(L, M, latent_dim)``; ``noise`` is
    eps where the caller draws it (the loop, for K processes that see the noise of one)."""
    if noise is None:
        noise = torch.randn((num_particles, *loc.shape), dtype=loc.dtype, device=loc.device)
    return loc + noise * torch.exp(0.5 * log_var), noise


def gaussian_log_q(noise: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log q(z | x) of the diagonal Gaussian at z = mu + sigma * eps, from eps:
    -1/2 sum_j (eps_j^2 + log sigma_j^2 + log 2 pi), ``(L, M)``."""
    return -0.5 * (noise.pow(2) + log_var + LOG_2PI).sum(-1)


def has_closed_form_kl(part) -> bool:
    """Whether a posterior or a prior declares that its KL can be closed-form (its attribute
    ``has_closed_form_kl``); one that says nothing (a user's module) has none: the traces' KL
    at the particle is used, which is right for any distribution."""
    return bool(getattr(part, "has_closed_form_kl", False))


@POSTERIORS.register("gaussian")
class GaussianPosterior(nn.Module):
    """q(z | x) = N(loc, diag(exp(log_var))): the paper's diagonal Gaussian, the reparameterization
    z = loc + exp(log_var / 2) * eps."""

    #: whether KL(q || p) can be closed-form (for Gaussian priors)
    has_closed_form_kl = True

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, loc: torch.Tensor, log_var: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)


@POSTERIORS.register("iaf")
class IAFPosterior(nn.Module):
    """The diagonal Gaussian followed by ``num_flows`` inverse autoregressive flow steps, each
    conditioned on the encoder's output (Kingma et al. 2016; see the module docstring).

    :param int num_flows: the number of IAF steps (>= 1).
    :param list hidden: hidden layer sizes of each step's autoregressive network (MADE), each
        >= latent_dim; default one layer of max(64, 2 latent_dim).
    """

    has_closed_form_kl = False

    def __init__(self, latent_dim: int, num_flows: int = 2, hidden: Optional[List[int]] = None):
        super().__init__()
        if num_flows < 1:
            raise ValueError(f"num_flows must be >= 1, got {num_flows}")
        hidden = [max(64, 2 * latent_dim)] if hidden is None else [int(h) for h in hidden]
        if not hidden or any(h < latent_dim for h in hidden):
            raise ValueError(f"hidden sizes must be >= latent_dim ({latent_dim}) for the autoregressive "
                             f"network to see every coordinate, got {hidden}")
        self.latent_dim = latent_dim
        order = torch.arange(latent_dim)
        self.flows = nn.ModuleList([
            ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(latent_dim, 2 * latent_dim, hidden,
                                            permutation=order if t % 2 == 0 else order.flip(0)),
                stable=True)
            for t in range(int(num_flows))])

    def forward(self, loc: torch.Tensor, log_var: torch.Tensor) -> dist.TorchDistribution:
        context = torch.cat([loc, log_var], -1)
        base = dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)
        return dist.TransformedDistribution(base, [flow.condition(context) for flow in self.flows])
