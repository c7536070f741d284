"""Priors p(z) over the latent code, found by name.

A prior is an ``nn.Module`` (it may own learned parameters) whose call returns a Pyro
distribution with event shape ``(latent_dim,)``. ``has_closed_form_kl`` says whether
KL(q(z|x) || p(z)) against the diagonal-Gaussian guide has a closed form, which is what the
``auto`` estimator needs to pick the paper's estimator B (``TraceMeanField_ELBO``).

Registered names: ``standard_normal``, ``gaussian``, ``mixture``, ``vamp``, ``flow``.

A prior that needs the encoder (the VampPrior) defines ``attach(encoder, event_shape)``,
which the :class:`~pyrovae.VAE` calls once its encoder exists.
"""

import contextlib
import math
from typing import List, Optional

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn
from torch.distributions import kl_divergence

from pyrovae.parts.nets import bounded, checked_range
from pyrovae.registry import Registry

PRIORS = Registry("prior", context=("latent_dim",))
"""Priors p(z) by name (``model.prior``): each built with ``latent_dim`` and the spec's options.
``@PRIORS.register("mine")`` on a :class:`Prior` subclass adds one (``docs/write-your-own.md``).
"""
LOG_2PI = math.log(2 * math.pi)


class Prior(nn.Module):
    """Base class: ``prior(batch_shape)`` returns p(z) with event shape ``(latent_dim,)``."""

    has_closed_form_kl = False

    def __init__(self, latent_dim: int):
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.latent_dim = latent_dim

    def distribution(self) -> dist.TorchDistribution:
        raise NotImplementedError

    def forward(self, batch_shape=()) -> dist.TorchDistribution:
        d = self._held_distribution()
        return d.expand(torch.Size(batch_shape)) if batch_shape else d

    def _held_distribution(self) -> dist.TorchDistribution:
        """:meth:`distribution`, or, inside :func:`priors_held` without gradients, the one computed first."""
        holding = self.__dict__.get("_holding", False) and not torch.is_grad_enabled()
        if not holding:
            return self.distribution()
        if self.__dict__.get("_held") is None:
            self.__dict__["_held"] = self.distribution()
        return self.__dict__["_held"]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for codes of shape ``(..., latent_dim)``."""
        return self().log_prob(z)

    def kl_from_normal(self, loc: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        """KL(N(loc, diag(exp(log_var))) || p(z)) for each code (only where ``has_closed_form_kl``)."""
        q = dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)
        return kl_divergence(q, self())


@contextlib.contextmanager
def priors_held(model: nn.Module):
    """Within it, each :class:`Prior` of ``model`` computes p(z) once, at its first use without
    gradients, and scores every later draw with it: the VampPrior's encoder pass over its K
    pseudo-inputs runs once per evaluation instead of once per chunk of importance samples (with
    K = 500 and a gated MLP that pass cost half again the decoder's work in
    :func:`pyrovae.log_likelihood`). For scoring under parameters that do not change; a use with
    gradients on computes afresh."""
    priors = [m for m in model.modules() if isinstance(m, Prior)]
    for prior in priors:
        prior.__dict__.update(_holding=True, _held=None)
    try:
        yield
    finally:
        for prior in priors:
            prior.__dict__.update(_holding=False, _held=None)


@PRIORS.register("standard_normal")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I), the paper's prior.

    The KL against a diagonal Gaussian q is, per datapoint,

    KL = 1/2 * sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)   (Kingma & Welling 2014, App. B).
    """

    has_closed_form_kl = True

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def distribution(self):
        return dist.Normal(self.loc, self.scale).to_event(1)

    def log_prob(self, z):
        return -0.5 * (z.pow(2).sum(-1) + self.latent_dim * LOG_2PI)

    def kl_from_normal(self, loc, log_var):
        return 0.5 * (loc.pow(2) + log_var.exp() - 1 - log_var).sum(-1)


@PRIORS.register("gaussian")
class GaussianPrior(Prior):
    """p(z) = N(m, diag(s^2)) with m and log s learned (initialised at N(0, I)).

    The KL between two diagonal Gaussians has a closed form, so estimator B applies.
    """

    has_closed_form_kl = True

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
        return gaussian_mixture(self.logits, self.locs, self.log_scales.exp())


def gaussian_mixture(logits, locs, scales) -> dist.TorchDistribution:
    """sum_k softmax(logits)_k N(locs_k, diag(scales_k^2)), with event shape ``(latent_dim,)``."""
    return DiagonalGaussianMixture(dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1))


class DiagonalGaussianMixture(dist.MixtureSameFamily):
    """A mixture of K diagonal Gaussians whose log-density is one matrix product per batch of codes
    instead of passes over a (codes x K x D) tensor. With a_k = 1 / s_k^2 and w_k the weights,

        -2 log (w_k N(z; m_k, diag s_k^2)) = [z^2, z, 1] . [a_k, -2 m_k a_k, m_k^2 . a_k + 2 sum_d log s_kd
                                                          + D log 2 pi - 2 log w_k],

    for all k at once; then log sum_k exp, with the terms more than 80 nats below the largest left
    out (below e^-80 of it: their exponentials would be denormal floats, many times slower). The
    expansion cancels where z is near m_k and s_k is small, so the product runs in float64 (D x K
    per code, small beside any decoder's). The VampPrior's log p(z) (500 components) is the cost it
    saves: in the importance-sampled log-likelihood torch's computation took several times the
    decoder's own time. Where the components' parameters are not one set shared across the batch
    (an ``expand`` of it), it is torch's computation; ``tests/test_vampprior_speed.py`` ties the
    two in value and gradient.
    """

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(x)
        weights = self._expansion() if x.device.type != "mps" else None  # MPS has no float64
        if weights is None:
            return super().log_prob(x)
        z = x.to(weights.dtype)
        features = torch.cat([z * z, z, torch.ones_like(z[..., :1])], -1)
        log_terms = (features @ weights.T).to(x.dtype)  # (..., K): log w_k + log N(z; m_k, s_k)
        top = log_terms.detach().amax(-1, keepdim=True)
        if log_terms.requires_grad:
            out = (log_terms - top).clamp(min=-80.0).exp().sum(-1).log()
        else:  # no graph to keep (an evaluation): in place, no other (..., K) tensor made
            out = log_terms.sub_(top).clamp_(min=-80.0).exp_().sum(-1).log_()
        out = out + top.squeeze(-1)
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))

    def _expansion(self) -> Optional[torch.Tensor]:
        """The (K, 2D + 1) float64 matrix of the class docstring, or None where the components'
        parameters differ across the batch. Kept on the distribution where no gradient flows to
        them: an evaluation's held prior (:func:`priors_held`) computes it once, not once per chunk
        of samples."""
        held = self.__dict__.get("_expansion_held")
        if held is not None:
            return held
        normal = self.component_distribution.base_dist
        loc, scale, logits = normal.loc, normal.scale, self.mixture_distribution.logits
        batch = loc.dim() - 2
        if any(t.stride()[i] for t in (loc, scale, logits) for i in range(batch)):
            return None
        first = (0,) * batch  # the one set every point of the batch shares
        wide = torch.float64
        loc, scale, logits = loc[first].to(wide), scale[first].to(wide), logits[first].to(wide)
        precision = scale.pow(-2)  # (K, D)
        constant = ((loc.pow(2) * precision).sum(-1) + 2 * scale.log().sum(-1) + loc.shape[-1] * LOG_2PI
                    - 2 * torch.log_softmax(logits, -1))
        weights = -0.5 * torch.cat([precision, -2 * loc * precision, constant.unsqueeze(-1)], -1)
        if not weights.requires_grad:
            self.__dict__["_expansion_held"] = weights
        return weights


@PRIORS.register("vamp")
class VampPrior(Prior):
    """The VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q_phi(z | u_k), the
    aggregate posterior of K learned pseudo-inputs u_k passed through the encoder.

    The pseudo-inputs have the data's shape and start uniform in [0, 1]. The KL against q has
    no closed form: ``auto`` uses estimator A.

    :param int num_pseudo_inputs: K (the paper uses 500 for MNIST).
    :param list pseudo_input_range: ``[low, high]``: the encoder reads hardtanh(u_k, low, high), as the
        paper keeps its pseudo-inputs in the data's range [0, 1] (``jmtomczak/vae_vampprior``,
        ``add_pseudoinputs``); a value outside it has no gradient. Absent: u_k as they are.

    [1] "VAE with a VampPrior", Jakub M. Tomczak, Max Welling (AISTATS 2018)
    """

    def __init__(self, latent_dim: int, num_pseudo_inputs: int = 100,
                 pseudo_input_range: Optional[List[float]] = None):
        super().__init__(latent_dim)
        if num_pseudo_inputs < 1:
            raise ValueError(f"num_pseudo_inputs must be >= 1, got {num_pseudo_inputs}")
        self.num_pseudo_inputs = num_pseudo_inputs
        self.pseudo_input_range = checked_range("pseudo_input_range", pseudo_input_range)
        self.pseudo_inputs = None

    def attach(self, encoder: nn.Module, event_shape) -> None:
        """Use the VAE's own encoder (held by reference, not as a second copy of its parameters)."""
        self.__dict__["encoder"] = encoder
        self.pseudo_inputs = nn.Parameter(torch.rand(self.num_pseudo_inputs, *event_shape))

    def distribution(self):
        if self.pseudo_inputs is None:
            raise RuntimeError("the VampPrior needs an encoder: build it through pyrovae.VAE")
        loc, log_var = self.__dict__["encoder"](bounded(self.pseudo_inputs, self.pseudo_input_range))
        logits = torch.zeros(self.num_pseudo_inputs, device=loc.device, dtype=loc.dtype)
        return gaussian_mixture(logits, loc, torch.exp(0.5 * log_var))


@PRIORS.register("flow")
class FlowPrior(Prior):
    """A normalizing-flow prior: z = f(e), e ~ N(0, I), with f a stack of masked
    autoregressive flows (Papamakarios et al. 2017) built from Pyro's transforms, the latent
    order reversed between layers.

    Each layer is Pyro's ``AffineAutoregressive`` used in its inverse direction, so that
    log p(z) = log N(f^{-1}(z)) + log |det d f^{-1} / dz| takes one network pass per layer
    (the cost paid in every training step) and sampling takes ``latent_dim`` passes. The KL
    against q has no closed form: ``auto`` uses estimator A.

    :param int num_flows: number of autoregressive layers.
    :param list hidden: hidden sizes of each layer's autoregressive network (MADE).
    """

    def __init__(self, latent_dim: int, num_flows: int = 2, hidden: List[int] = (64,)):
        super().__init__(latent_dim)
        if latent_dim < 2:
            raise ValueError("the flow prior needs latent_dim >= 2")
        if num_flows < 1:
            raise ValueError(f"num_flows must be >= 1, got {num_flows}")
        if any(h < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be >= 1, got {list(hidden)}")
        self.flows = nn.ModuleList(T.affine_autoregressive(latent_dim, hidden_dims=list(hidden))
                                   for _ in range(num_flows))
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1))

    def distribution(self):
        transforms = []
        for i, flow in enumerate(self.flows):
            if i:
                transforms.append(T.Permute(self.reverse))
            transforms.append(flow.inv)
        return dist.TransformedDistribution(dist.Normal(self.loc, self.scale).to_event(1), transforms)
