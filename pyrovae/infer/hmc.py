"""Monte Carlo EM with Hamiltonian Monte Carlo E-steps, and HMC-based estimates of log p(x).

Kingma & Welling (2014, Sec. 5, Figure 3) compare AEVB with Monte Carlo EM on the same
generative model p_theta(x, z) = p(z) p_theta(x | z): no recognition model, instead

- E-step: for each datapoint x_i of a minibatch, move its own latent z_i by Hamiltonian
  Monte Carlo on the posterior p_theta(z | x_i) (10 leapfrog steps, the step size tuned to
  an acceptance rate of about 90%); the chains persist across iterations;
- M-step: a few (5) gradient steps on theta of (1/M) sum_i log p_theta(x_i, z_i).

The datapoints' posteriors are independent, so each datapoint runs its own chain with its
own Metropolis test, all vectorized, the step size shared and tuned on their mean
acceptance probability: one chain over the whole
minibatch (what Pyro's ``HMC`` kernel runs) would accept or reject every datapoint
together, and its acceptance would fall with the minibatch size. The leapfrog steps are
Pyro's :func:`~pyro.ops.integrator.velocity_verlet`; the potential energy
-log p(x_i, z_i) is read off a Pyro trace of the model conditioned on z.

:func:`hmc_log_likelihood` estimates log p(x) for any decoder (with or without an encoder)
by importance sampling from a proposal fitted to HMC samples of each posterior, used for
the three systems alike in the reproduction of Figure 3.

[1] "Auto-Encoding Variational Bayes", D. P. Kingma, M. Welling (2014), Sec. 5
[2] "MCMC using Hamiltonian dynamics", R. M. Neal (2011)
"""

import math
from typing import Dict, Optional

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.ops.integrator import velocity_verlet

from pyrovae.errors import ConfigError
from pyrovae.models.terms import LogMeanExp, sample_sites
from pyrovae.rng import seeded


def log_joint(vae, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x_i, z_i) = log p(z_i) + log p_theta(x_i | z_i) for each datapoint (shape ``(M,)``),
    from a trace of ``vae.model`` conditioned on z (unscaled: no N/M)."""
    trace = poutine.trace(poutine.condition(vae.model, data={"z": z})).get_trace(x)
    return sum(site["fn"].log_prob(site["value"]) for _, site in sample_sites(trace))


def hmc_transition(vae, x: torch.Tensor, z: torch.Tensor, step_size, num_leapfrog: int = 10,
                   generator: Optional[torch.Generator] = None, jitter: float = 0.2):
    """One HMC transition for each datapoint's own chain: ``(z_next, accept_prob)``.

    :param z: the current latents, shape ``(M, latent_dim)``.
    :param step_size: the leapfrog step size: a float, or one per chain (shape ``(M,)``).

    The momenta r ~ N(0, I); ``num_leapfrog`` velocity-Verlet steps of the Hamiltonian
    H(z, r) = -log p(x, z) + |r|^2 / 2; datapoint i moves to the proposal with probability
    min(1, exp(H_i(z, r) - H_i(z', r'))). A non-finite proposal is rejected. Each chain's
    step size is multiplied by a uniform draw from [1 - jitter, 1 + jitter] (independent of
    the state, so the chain stays reversible): a fixed trajectory length can be a whole
    period of a Gaussian posterior's oscillation, and the chain would then hardly move
    (Neal 2011, Sec. 5.4.2.2).
    """
    energies = []  # -log p(x_i, z_i) at each position the integrator visits, the start first

    def potential(params: Dict[str, torch.Tensor]) -> torch.Tensor:
        energy = -log_joint(vae, x, params["z"])
        energies.append(energy.detach())
        return energy.sum()  # the chains are independent: the gradient of the sum is each chain's

    r = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    u = torch.rand((z.shape[0], 1), generator=generator, device=z.device, dtype=z.dtype)
    step_size = torch.as_tensor(step_size, dtype=z.dtype, device=z.device).reshape(-1, 1) * (1 + jitter * (2 * u - 1))
    z_new, r_new, _, _ = velocity_verlet({"z": z.clone()}, {"z": r}, potential, lambda m: m, step_size,
                                         num_steps=num_leapfrog)
    energy0, energy1 = energies[0], energies[-1]
    log_ratio = (energy0 + 0.5 * r.pow(2).sum(-1)) - (energy1 + 0.5 * r_new["z"].pow(2).sum(-1))
    log_ratio = torch.where(torch.isfinite(log_ratio), log_ratio, torch.full_like(log_ratio, -math.inf))
    accept_prob = log_ratio.clamp(max=0).exp()
    u = torch.rand(accept_prob.shape, generator=generator, device=z.device, dtype=z.dtype)
    accept = u < accept_prob
    return torch.where(accept[:, None], z_new["z"].detach(), z), accept_prob


def adapt_step_size(step_size: float, accept_prob: torch.Tensor, target: float, rate: float = 0.5) -> float:
    """One Robbins-Monro step on the log step size, shared by the chains: larger when their
    mean acceptance probability is above ``target``, smaller when below."""
    return step_size * math.exp(rate * (accept_prob.mean().item() - target))


class Chains:
    """One persistent HMC chain per training point on p_theta(z | x_i), the E-step of Monte Carlo
    EM: :meth:`advance` moves the chains of a minibatch's points by ``hmc_steps`` transitions of
    ``num_leapfrog`` leapfrog steps, the shared step size tuned towards ``target_accept``.
    The chains start from the prior. Their state (latents, step size, generator) is tensors and
    numbers: :meth:`state_dict` goes into a checkpoint.
    """

    def __init__(self, vae, num_data: int, num_leapfrog: int = 10, hmc_steps: int = 1, target_accept: float = 0.9,
                 initial_step_size: float = 0.1, seed: int = 0):
        if num_leapfrog < 1 or hmc_steps < 1:
            raise ConfigError("MonteCarloEM: num_leapfrog and hmc_steps must be >= 1")
        if not 0 < target_accept < 1:
            raise ConfigError(f"MonteCarloEM: target_accept = {target_accept!r}: must be in (0, 1)")
        if not initial_step_size > 0:
            raise ConfigError(f"MonteCarloEM: initial_step_size = {initial_step_size!r}: must be > 0")
        self.vae, self.num_leapfrog, self.hmc_steps, self.target_accept = vae, num_leapfrog, hmc_steps, target_accept
        device = vae.device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            self.z = vae.prior().sample((num_data,)).to(device)
        self.step_size = float(initial_step_size)
        self.last_accept = float("nan")

    def advance(self, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Move the chains of the datapoints ``index`` (data ``x``); return their latents."""
        z = self.z[index]
        accepts = []
        for _ in range(self.hmc_steps):
            z, accept_prob = hmc_transition(self.vae, x, z, self.step_size, self.num_leapfrog, self.generator)
            self.step_size = adapt_step_size(self.step_size, accept_prob, self.target_accept)
            accepts.append(accept_prob.mean())
        self.z[index] = z
        self.last_accept = torch.stack(accepts).mean().item()
        return z

    def state_dict(self) -> Dict:
        return {"z": self.z, "step_size": self.step_size, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict) -> None:
        if tuple(state["z"].shape) != tuple(self.z.shape):
            raise ValueError(f"chains of shape {tuple(state['z'].shape)}, the run has {tuple(self.z.shape)}")
        self.z = state["z"].to(self.z.device, self.z.dtype)
        self.step_size = float(state["step_size"])
        self.generator.set_state(state["generator"])


def posterior_moments(vae, x: torch.Tensor, burn_in: int = 100, num_samples: int = 50, num_leapfrog: int = 10,
                      target_accept: float = 0.9, generator: Optional[torch.Generator] = None):
    """``(mean, var)`` of p_theta(z | x_i) for each datapoint from its own HMC chain, started
    at the prior, tuned over ``burn_in`` transitions, then run for ``num_samples``."""
    with torch.no_grad():
        z = vae.prior().sample((x.shape[0],))
    step = 0.1
    samples = []
    for t in range(burn_in + num_samples):
        z, accept_prob = hmc_transition(vae, x, z, step, num_leapfrog, generator)
        if t < burn_in:
            step = adapt_step_size(step, accept_prob, target_accept)
        else:
            samples.append(z)
    samples = torch.stack(samples)
    return samples.mean(0), samples.var(0)


@torch.no_grad()
def hmc_log_likelihood(vae, x: torch.Tensor, num_samples: int = 1000, burn_in: int = 100, chain_samples: int = 50,
                       inflate: float = 1.5, prior_weight: float = 0.2, chunk: int = 100,
                       seed: Optional[int] = 0) -> torch.Tensor:
    """log p(x_i) for each datapoint (shape ``(N,)``, nats), by importance sampling without an encoder.

    For each datapoint a Gaussian N(m_i, inflate^2 diag(v_i)) is fitted to the samples of
    its own HMC chain on p(z | x_i) (:func:`posterior_moments`); the proposal is the
    defensive mixture (Hesterberg 1995) q_i = (1 - w) N(m_i, inflate^2 v_i) + w p(z), which
    keeps the weights bounded where the Gaussian is too narrow. With z_k ~ q_i, k = 1..K,

        log p(x_i) ~= log (1/K) sum_k p(x_i, z_k) / q_i(z_k),

    whose exponent is an unbiased estimate of p(x_i) whatever the fit (the log is a
    stochastic lower bound that tightens as K grows). The same estimator serves models
    trained by AEVB, wake-sleep or Monte Carlo EM (the paper's Figure 3). Datapoints are
    processed ``chunk`` at a time, and so are the K samples. ``seed=None`` draws from the
    caller's generator.
    """
    if not 0 < prior_weight < 1:
        raise ValueError(f"hmc_log_likelihood: prior_weight = {prior_weight!r}: must be in (0, 1)")
    out = []
    with seeded(x, seed):
        for xb in x.split(chunk):
            with torch.enable_grad():
                mean, var = posterior_moments(vae, xb, burn_in, chain_samples)
            gaussian = dist.Normal(mean, inflate * var.clamp(min=1e-6).sqrt()).to_event(1)
            prior = vae.prior()
            estimate = LogMeanExp()
            for start in range(0, num_samples, chunk):
                k = min(chunk, num_samples - start)
                from_prior = torch.rand((k, xb.shape[0], 1), device=xb.device) < prior_weight
                z = torch.where(from_prior, prior.sample((k, xb.shape[0])), gaussian.sample((k,)))
                log_q = torch.logaddexp(math.log1p(-prior_weight) + gaussian.log_prob(z),
                                        math.log(prior_weight) + prior.log_prob(z))
                log_w = vae.likelihood_dist(z, batch=xb).log_prob(xb) + prior.log_prob(z) - log_q
                estimate.add(log_w)
            out.append(estimate.value)
    return torch.cat(out)
