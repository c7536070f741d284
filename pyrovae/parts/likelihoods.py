"""Likelihoods p(x | z), found by name: the decoder's output turned into a distribution.

A likelihood is an ``nn.Module`` with ``num_params``, the number of decoder outputs it needs
per data value. The decoder emits ``num_params`` tensors, each shaped like the data
(``(..., *event_shape)``); ``likelihood(params, event_dim)`` takes that tuple and returns a
Pyro distribution whose event shape is the data's. ``check_data(x)`` rejects data outside
the support before training, with a message that names the fix.

A likelihood may read the minibatch for per-point quantities (a cell's library size):
the family passes the decoder's outputs through ``given(params, batch)`` before any other
call, with the :class:`~pyrovae.data.batch.Batch` of the points (``batch.x``, ``batch.y``),
or ``batch=None`` where there are no data (codes drawn from the prior).

Registered names: ``bernoulli``, ``continuous_bernoulli``, ``gaussian``, ``laplace``, and for
counts ``poisson``, ``negative_binomial`` and ``zero_inflated_negative_binomial``.
"""

from typing import Tuple

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyrovae.data.batch import NoData, as_batch
from pyrovae.errors import DataError, shown
from pyrovae.registry import Registry, check_choice

LIKELIHOODS = Registry("likelihood", context=("event_shape",))
"""Likelihoods p(x | z) by name (``model.likelihood``): each built with the data's ``event_shape``
(the shape of one data point), where it takes it, and the spec's options;
``@LIKELIHOODS.register("mine")`` on a :class:`Likelihood` subclass adds one.
"""


class Likelihood(nn.Module):
    """Base class. Subclasses set ``num_params`` and implement ``base(params)``."""

    num_params = 1
    #: Human-readable support, used in data-check messages.
    support_text = "any real value"
    #: whether it scores whole-number counts: a run's uint8 data then reach it as counts, unscaled
    #: (``data.scale`` defaults to 1 instead of 1/255)
    counts = False

    def base(self, params: tuple) -> dist.TorchDistribution:
        """The per-value distribution (batch shape = data shape) for a tuple of decoder outputs."""
        raise NotImplementedError

    def given(self, params: tuple, batch=None) -> tuple:
        """The decoder's outputs for the points of ``batch`` (a Batch or a tensor of points, or
        None for codes drawn from the prior): where a likelihood reads per-point quantities of
        the data, it folds them in here, and every other method sees what this returns. The
        outputs have leading dimensions ``(..., M)`` (particles, points) where ``batch`` holds M
        points. By default: unchanged."""
        return params

    def forward(self, params: tuple, event_dim: int) -> dist.TorchDistribution:
        return self.base(params).to_event(event_dim)

    def log_prob(self, params: tuple, x: torch.Tensor, event_dim: int) -> torch.Tensor:
        """log p(x|z), summed over the data's ``event_dim`` dimensions: the distribution's
        ``log_prob`` (a subclass may write its closed form with fewer operations; the training
        loop calls this, Pyro's model samples from the distribution)."""
        return self(params, event_dim).log_prob(x)

    def mean(self, params: tuple) -> torch.Tensor:
        """E[x | z]: what the decoder 'draws' (used for reconstructions, samples, manifolds)."""
        return self.base(params).mean

    def in_support(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones((), dtype=torch.bool, device=x.device)

    def check_data(self, x: torch.Tensor, where: str = "data") -> None:
        """Raise :class:`DataError` if any value of ``x`` lies outside this likelihood's support."""
        ok = self.in_support(x)
        if not bool(ok.all()):
            bad = x[~ok].flatten()[0].item()
            raise DataError(f"{where}: value {shown(bad)} is outside the support of {shown(self.name)} "
                            f"({self.support_text}){self.fix_hint}")

    fix_hint = ""

    @property
    def name(self) -> str:
        return next((n for n in LIKELIHOODS.names() if LIKELIHOODS.get(n) is type(self)), type(self).__name__)


#: factors sigmoid(|t|) multiplied together before one log is taken: each lies in [1/2, 1], so a
#: product of 64 stays above 2^-64, far above float32's smallest normal number (2^-126)
LOG_SIGMOID_GROUP = 64


class _SumLogSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        factors = t.abs().sigmoid_()
        n = t.shape[-1]
        group = LOG_SIGMOID_GROUP if t.dtype in (torch.float32, torch.float64) else 1
        whole = n - n % group
        out = factors[..., :whole].unflatten(-1, (whole // group, group)).prod(-1).log_().sum(-1)
        if whole < n:
            out = out.add_(factors[..., whole:].log_().sum(-1))
        return out.add_(t.clamp(max=0).sum(-1))

    @staticmethod
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        return grad.unsqueeze(-1) * torch.sigmoid(-t)


def sum_log_sigmoid(t: torch.Tensor) -> torch.Tensor:
    """sum_i log sigmoid(t_i) over the last dimension, with torch's gradient sigmoid(-t_i).

    Each term is min(t_i, 0) + log sigmoid(|t_i|), and sigmoid(|t_i|) lies in [1/2, 1], so nothing
    under- or overflows. The logs are taken of products of :data:`LOG_SIGMOID_GROUP` factors: one log
    for 64 values in float32 and float64 (one a value in lower precisions, whose products would lose
    their digits). On one CPU thread a log over a chunk of 660 x 784 logits took 0.5 ms against
    0.2 ms for the sigmoids (torch's ``logsigmoid``, 0.8 ms), and ``pyrovae.log_likelihood`` of the
    VampPrior paper's model ran 5% faster for it (``benchmarks/vampprior.py --nll``). A product of 64
    factors carries 64 roundings (4e-6 relative in float32) and sigmoid(|t|) rounds to 1 an e^-|t|
    below float32's epsilon, so a sum of 784 terms is torch's to about 1e-5 nats;
    ``tests/test_vampprior_speed.py`` ties the two in value and gradient.
    """
    return _SumLogSigmoid.apply(t)


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """x_i ~ Bernoulli(sigmoid(logit_i)) independently: the paper's decoder for binary MNIST.

    log p(x|z) = sum_i x_i * l_i - softplus(l_i), the negative binary cross-entropy; for x_i in
    {0, 1} that is sum_i log sigmoid((2 x_i - 1) l_i), which is how it is computed (:func:`sum_log_sigmoid`:
    a sigmoid for each value, a log for each 64).
    """

    support_text = "binary values 0 or 1"
    fix_hint = ("; binarize the data (data.binarize = 'dynamic' or 'threshold') "
                "or use likelihood 'continuous_bernoulli' for grey levels in [0, 1]")

    def base(self, params):
        return dist.Bernoulli(logits=params[0])

    def log_prob(self, params, x, event_dim):
        logits = params[0]  # (..., *event_shape); x broadcasts over the leading particle dimensions
        sign = 2 * x.detach() - 1  # +1 where x = 1, -1 where x = 0
        out = sum_log_sigmoid((logits * sign).flatten(-event_dim))
        if x.requires_grad:  # d/dx of x l - softplus(l) is l (the sign's form has another slope off {0, 1})
            out = out + ((x - x.detach()) * logits).flatten(-event_dim).sum(-1)
        return out

    def mean(self, params):
        return torch.sigmoid(params[0])

    def in_support(self, x):
        return (x == 0) | (x == 1)


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulliLikelihood(Likelihood):
    """x_i ~ ContinuousBernoulli(sigmoid(logit_i)) on [0, 1] (Loaiza-Ganem & Cunningham 2019).

    The properly normalised version of the Bernoulli 'likelihood' applied to grey levels:
    log p(x|z) = x l - softplus(l) + log C(l), with C the normalising constant.
    """

    support_text = "values in [0, 1]"
    fix_hint = "; rescale the data to [0, 1] (pixels / 255)"

    def base(self, params):
        return dist.ContinuousBernoulli(logits=params[0])

    def in_support(self, x):
        return (x >= 0) & (x <= 1)


class _LocationScale(Likelihood):
    """Shared by Gaussian and Laplace: a location from the decoder, a fixed or learned scale.

    :param float scale: the fixed scale sigma when ``learn_scale`` is false.
    :param bool learn_scale: the decoder emits a second output per value, a raw scale
        mapped to ``min_scale + softplus(raw)`` (a learned per-pixel sigma).
    :param bool sigmoid_mean: pass the location through a sigmoid (the paper's Frey Face
        decoder, for data in [0, 1]).
    :param float min_scale: floor on a learned scale, which keeps log p(x|z) bounded.
    """

    family = None

    def __init__(self, scale: float = 1.0, learn_scale: bool = False, sigmoid_mean: bool = False,
                 min_scale: float = 1e-3):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if min_scale <= 0:
            raise ValueError(f"min_scale must be > 0, got {min_scale}")
        self.scale = float(scale)
        self.learn_scale = bool(learn_scale)
        self.sigmoid_mean = bool(sigmoid_mean)
        self.min_scale = float(min_scale)
        self.num_params = 2 if learn_scale else 1

    def loc_scale(self, params):
        loc = torch.sigmoid(params[0]) if self.sigmoid_mean else params[0]
        if self.learn_scale:
            return loc, self.min_scale + F.softplus(params[1])
        return loc, loc.new_full((), self.scale).expand(loc.shape)

    def base(self, params):
        return self.family(*self.loc_scale(params))

    def mean(self, params):
        return self.loc_scale(params)[0]

    def in_support(self, x):
        return torch.isfinite(x)


@LIKELIHOODS.register("gaussian")
class GaussianLikelihood(_LocationScale):
    """x_i ~ N(mu_i(z), sigma^2).

    With a fixed sigma = 1, -log p(x|z) = 1/2 ||x - mu||^2 + D/2 log(2 pi): the squared-error
    loss. With ``learn_scale = true`` and ``sigmoid_mean = true`` it is the paper's Frey Face
    decoder (Kingma & Welling 2014, App. C.2).
    """

    family = dist.Normal


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(_LocationScale):
    """x_i ~ Laplace(mu_i(z), b): -log p(x|z) = ||x - mu||_1 / b + D log(2 b), the L1 loss."""

    family = dist.Laplace


class _Counts(Likelihood):
    """Shared by the count likelihoods: a mean mu_i per value, with a size factor per point.

    The decoder's first output is a log-mean. With ``library = "learned"`` it is log mu_i
    itself: the network learns each point's scale from z. With ``library = "observed"`` it is
    turned into proportions rho = softmax over the features, and mu_i = l * rho_i with l the
    point's total count sum_i x_i, as in scVI (Lopez et al. 2018, where l is observed when
    ``use_observed_lib_size``): z then describes composition, not depth. A point with no counts
    takes l = 1. Codes drawn from the prior (no data) take the geometric mean of the library
    sizes seen in training steps (not in evaluations, which run without gradients).

    :param str library: ``"learned"`` or ``"observed"``.
    """

    support_text = "whole numbers >= 0 (counts)"
    fix_hint = ("; count likelihoods take raw counts, not normalized or log-transformed values (uint8 counts: "
                "data.scale = 1, or scale=1 in load_dataset)")
    counts = True

    def __init__(self, event_shape: Tuple[int, ...], library: str = "learned"):
        super().__init__()
        check_choice("library", library, ("learned", "observed"), ValueError)
        self.event_dim = len(tuple(event_shape))
        self.observed_library = library == "observed"
        # the running mean of log l over the training minibatches (float64: exact for any run's length)
        self.register_buffer("log_library_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("library_count", torch.zeros((), dtype=torch.float64))

    def log_library(self, batch) -> torch.Tensor:
        """log l per point, ``(M, 1, ..., 1)``, or the training mean (a scalar) for ``batch=None`` or a
        batch without data (codes drawn from the prior: :meth:`pyrovae.Batch.without_data`)."""
        if batch is None or isinstance(as_batch(batch).x, (NoData, type(None))):
            mean = self.log_library_sum / self.library_count.clamp(min=1)
            return mean.to(torch.get_default_dtype())
        x = as_batch(batch).x
        log_l = x.flatten(-self.event_dim).sum(-1).clamp(min=1).log()
        if self.training and torch.is_grad_enabled():  # training steps only: evaluations run without gradients
            with torch.no_grad():
                self.log_library_sum += log_l.double().sum()
                self.library_count += log_l.numel()
        return log_l.reshape(log_l.shape + (1,) * self.event_dim)

    def given(self, params, batch=None):
        if not self.observed_library:
            return params
        out = params[0]
        log_proportion = out.flatten(-self.event_dim).log_softmax(-1).view(out.shape)
        return (log_proportion + self.log_library(batch).to(out.dtype), *params[1:])

    def in_support(self, x):
        return (x >= 0) & (x == x.round())


@LIKELIHOODS.register("poisson")
class PoissonLikelihood(_Counts):
    """x_i ~ Poisson(mu_i), log p(x|z) = sum_i x_i log mu_i - mu_i - log x_i!.

    ``library`` as for every count likelihood (:class:`NegativeBinomialLikelihood`).
    """

    def base(self, params):
        return dist.Poisson(params[0].exp())


@LIKELIHOODS.register("negative_binomial")
class NegativeBinomialLikelihood(_Counts):
    """x_i ~ NB(mu_i, theta_i), the Gamma-Poisson mixture of scVI (Lopez et al. 2018): mean mu_i,
    variance mu_i + mu_i^2 / theta_i.

    log p(x_i) = log Gamma(x_i + theta) - log Gamma(theta) - log x_i!
                 + theta log(theta / (theta + mu)) + x_i log(mu / (theta + mu)).

    In torch's terms it is ``NegativeBinomial(total_count=theta, logits=log mu - log theta)``.

    :param str library: ``"learned"`` (the decoder gives log mu) or ``"observed"`` (the decoder
        gives proportions, scaled by each point's total count).
    :param str dispersion: ``"feature"``, a learned inverse dispersion theta per data value
        (scVI's ``dispersion = "gene"``), or ``"shared"``, one learned theta for all values.
    """

    def __init__(self, event_shape: Tuple[int, ...], library: str = "learned", dispersion: str = "feature"):
        super().__init__(event_shape, library)
        check_choice("dispersion", dispersion, ("feature", "shared"), ValueError)
        self.dispersion = dispersion
        # log theta, initialised at 0 (theta = 1), learned with the networks
        self.log_theta = nn.Parameter(torch.zeros(tuple(event_shape) if dispersion == "feature" else ()))

    def theta_logits(self, log_mean: torch.Tensor) -> tuple:
        """(theta, logits = log mu - log theta), both shaped like the log-mean."""
        log_theta = self.log_theta.expand(log_mean.shape[log_mean.dim() - self.event_dim:])
        return log_theta.exp().expand(log_mean.shape), log_mean - log_theta

    def base(self, params):
        theta, logits = self.theta_logits(params[0])
        return dist.NegativeBinomial(total_count=theta, logits=logits)


@LIKELIHOODS.register("zero_inflated_negative_binomial")
class ZeroInflatedNegativeBinomialLikelihood(NegativeBinomialLikelihood):
    """x_i ~ pi_i delta_0 + (1 - pi_i) NB(mu_i, theta_i), scVI's ZINB: the negative binomial with a
    dropout zero of probability pi_i = sigmoid(g_i), g_i the decoder's second output.

    log p(0) = log(pi + (1 - pi) NB(0)),  log p(x > 0) = log(1 - pi) + log NB(x).

    Options as for ``negative_binomial``.
    """

    num_params = 2

    def base(self, params):
        theta, logits = self.theta_logits(params[0])
        return dist.ZeroInflatedNegativeBinomial(total_count=theta, logits=logits, gate_logits=params[1])
