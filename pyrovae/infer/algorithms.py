"""Training algorithms by name (``train.algorithm``): what one step of the loop maximises.

- ``aevb``: stochastic variational inference on an ELBO estimator (Kingma & Welling 2014), with
  the torch engine (the estimator over the model's :meth:`~pyrovae.Model.terms`, closed forms
  where the family has them) or Pyro's ELBO classes on ``model.model`` and ``model.guide``;
- ``wake_sleep``: the paper's baseline (Hinton et al. 1995), :class:`pyrovae.WakeSleep`;
- ``mcem``: Monte Carlo EM, the paper's other baseline: per-datapoint HMC chains (E-step), then
  ``weight_updates`` gradient steps on the decoder and prior (M-step); the chains are checkpointed.

An algorithm owns its step loss, its compatibility checks (with the config, the model and the
number of processes), any state of its own for the checkpoint, and the ``[train]`` keys that
must match on ``--resume``. The loop (:mod:`pyrovae.training.loop`) calls only this interface: per step,
``loss(batch, noise, beta, global_size)``, then backward, the finiteness check and the optimizer.
Register another with ``@pyrovae.ALGORITHMS.register("name")``.
"""

import contextlib
import re
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import pyro
import torch
from torch.nn.parallel import DistributedDataParallel

from pyrovae.data.batch import Batch
from pyrovae.errors import ConfigError, PyrovaeError, one_line
from pyrovae.infer import hmc
from pyrovae.infer.elbos import make_elbo, minibatch_sums
from pyrovae.infer.estimators import TermsELBO, get_estimator
from pyrovae.infer.wake_sleep import WakeSleep
from pyrovae.models.base import per_minibatch_labels
from pyrovae.registry import Registry

ALGORITHMS = Registry("algorithm", context=("model", "train", "estimator", "num_data", "world"))
"""Training algorithms by name (``train.algorithm``): ``aevb``, ``wake_sleep`` and ``mcem``, each an
:class:`Algorithm` giving one step's loss.
"""


class NonFinite(Exception):
    """A non-finite value met in the forward pass (the loop adds where it happened)."""


@dataclass
class StepLoss:
    """One step's loss for this process's shard of the global minibatch.

    :param loss: what ``backward()`` runs on: minus the full-data objective estimate divided by
        N, of which this process holds its share (DDP averages the processes' gradients).
    :param objective_sum: minus the shard's sum of what is maximised (detached).
    :param elbo_sum: minus the shard's sum of ELBO estimates (detached).
    """

    loss: torch.Tensor
    objective_sum: torch.Tensor
    elbo_sum: torch.Tensor

    @classmethod
    def of(cls, objective: torch.Tensor, elbo: Optional[torch.Tensor], global_size: int, world: int = 1) -> "StepLoss":
        """The one normalization of every algorithm's step: ``objective`` is the shard's sum of what
        is maximised (differentiable), ``elbo`` the shard's sum of ELBOs (None: the objective is the
        ELBO). The loss is -(1/M) times the global minibatch's sum, M = ``global_size``: DDP averages
        the ``world`` processes' gradients, so each shard's sum counts world / M."""
        objective_sum = -objective.detach()
        elbo_sum = objective_sum if elbo is None else -elbo.detach()
        return cls(objective * (-world / global_size), objective_sum, elbo_sum)


def pyro_objective(pyro_loss: torch.Tensor, batch_size: int, num_data: int) -> torch.Tensor:
    """A Pyro ELBO's loss of a minibatch, -(N/M) sum_i f_i under the plate "data", as the
    minibatch's sum of objectives sum_i f_i (the plate's N/M undone)."""
    return pyro_loss * (-batch_size / num_data)


def reported_elbo(model, batch, estimator: TermsELBO, num_data: int) -> torch.Tensor:
    """The minibatch's sum of ELBOs that an algorithm whose objective is not the ELBO reports: the
    estimator's ELBO (beta = 1) over the model's terms, a global latent shared by N = ``num_data``
    points, drawn from the RNG as it stands (the torch engine's ELBO at the same draw). The
    estimator is built once, by the algorithm."""
    with torch.no_grad():
        return estimator.per_datapoint(model.model, model.guide, (batch, num_data))[1].sum()


class Algorithm:
    """The base: ``loss`` per step, plus checks, state and resume keys."""

    #: the ``[train]`` keys a resumed run must share with the checkpoint's
    resume_keys = ("batch_size", "estimator", "num_particles", "seed", "beta", "kl_warmup_epochs",
                   "labeled_per_batch", "labeled_weight")
    #: whether the loop draws the family's noise for it (:meth:`~pyrovae.Model.noise_shape`)
    draws_noise = False
    #: whether Pyro's validation stays on during the loop (the torch engine checked the data once)
    validates = True
    #: gradient steps the loop takes on each minibatch (``loss`` is called with update = 0, 1, ...)
    updates_per_batch = 1
    #: whether it trains the guide (else the loop does not warn of collapsed latent units)
    trains_guide = True

    def __init__(self, model, train, estimator: str, num_data: int, world: int = 1):
        self.model, self.train, self.estimator, self.num_data, self.world = model, train, estimator, num_data, world

    @classmethod
    def check_config(cls, train) -> None:
        """Refuse ``[train]`` settings the algorithm cannot honour (one ConfigError line)."""

    def loss(self, batch: Batch, noise: Optional[torch.Tensor], beta: float, global_size: int,
             index: Optional[torch.Tensor] = None, update: int = 0) -> StepLoss:
        """The step's loss for this process's shard ``batch`` (training points ``index``); ``update``
        counts the gradient steps taken on this minibatch so far."""
        raise NotImplementedError

    def dry_run(self, batches: Union[Batch, Sequence[Batch]]) -> None:
        """Called once when the run is built, before any step, on a small batch of each kind the
        steps will see (a list; under a label budget a family that takes labels per minibatch
        trains on labelled and unlabelled minibatches): refuse in one ConfigError line what a step
        would fail on (by default the step's loss is computed on each)."""
        batches = _batches(batches)
        for batch in batches:
            kind = "" if len(batches) == 1 else "unlabelled " if batch.y is None else "labelled "
            try:
                with torch.random.fork_rng(devices=[]):  # with gradients (Pyro's TraceEnum_ELBO wants them), no step
                    self.loss(batch, None, 1.0, len(batch), torch.arange(len(batch)))
            except (PyrovaeError, NonFinite):
                raise
            except Exception as e:  # a family's or Pyro's code can fail in any way
                raise ConfigError(f"train.algorithm = {type(self).__name__}: a dry step on {len(batch)} {kind}points "
                                  f"fails ({type(e).__name__}: {one_line(str(e), 200)})") from None

    def state_dict(self) -> Dict[str, Any]:
        """State of its own to checkpoint (tensors and plain containers only)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass


class _Objective(torch.nn.Module):
    """A minibatch's sums under the run's ELBO (:func:`~pyrovae.infer.elbos.minibatch_sums`), as a
    module that DistributedDataParallel can wrap."""

    def __init__(self, model, elbo: pyro.infer.ELBO, num_data: int):
        super().__init__()
        self.model, self.elbo, self.num_data = model, elbo, num_data

    def forward(self, x, y, labeled, weight, noise, beta: float):
        return minibatch_sums(self.elbo, self.model, Batch(x, y, labeled, weight), self.num_data, beta, noise)


@ALGORITHMS.register("aevb")
class AEVB(Algorithm):
    """Auto-encoding variational Bayes: a gradient step on an ELBO estimator of the minibatch,
    scaled to the full data (Kingma & Welling 2014, Algorithm 1). The step reads one
    ``pyro.infer.ELBO`` on ``model.model`` and ``model.guide`` (:func:`~pyrovae.infer.elbos.make_elbo`):
    ``train.engine`` only chooses which is built, pyrovae's estimator over the family's terms
    (``torch``, closed forms where the family has them) or Pyro's class (``pyro``; ``TraceEnum_ELBO``
    where the model has sites marked for enumeration), chosen on the dry batches."""

    @classmethod
    def check_config(cls, train) -> None:
        if train.labeled_per_batch and train.engine == "pyro":
            raise ConfigError("train.labeled_per_batch weighs the points of a minibatch, which train.engine = 'pyro' "
                              "does not; use engine 'torch'")

    def __init__(self, model, train, estimator, num_data, world=1):
        super().__init__(model, train, estimator, num_data, world)
        per_minibatch = per_minibatch_labels(model, train.engine)
        if train.engine == "pyro" and train.labeled_weight != 1 and not per_minibatch:
            raise ConfigError(f"train.labeled_weight = {train.labeled_weight!r} weighs the labelled points of a "
                              "mixed minibatch, which train.engine = 'pyro' does not; use engine 'torch' (a family "
                              "with labels = 'per_minibatch' takes it under either engine)")
        if train.engine == "pyro" and world > 1:
            raise ConfigError("train.engine = 'pyro' trains in one process; distributed runs use engine 'torch'")
        self.per_minibatch = per_minibatch
        # the torch engine's estimator is built now (the model's own dry run checked its terms); Pyro's
        # class is chosen from the traces of the dry batches
        self._build(make_elbo(estimator, model, train.num_particles, engine="torch") if train.engine == "torch"
                    else None)

    def _build(self, elbo: Optional[pyro.infer.ELBO]) -> None:
        self.elbo = elbo
        self.draws_noise = isinstance(elbo, TermsELBO) and elbo.reads_model_terms(self.model.model, self.model.guide)
        self.validates = not self.draws_noise  # the torch engine checked the data once
        if elbo is None:
            return
        self.objective = _Objective(self.model, elbo, self.num_data)
        # gradients are averaged over the processes by PyTorch's DDP; a family's labelled and
        # unlabelled minibatches may each leave some parameters out (Pyro's M2: q(y | x))
        self.forward = DistributedDataParallel(self.objective, find_unused_parameters=self.per_minibatch) \
            if self.world > 1 else self.objective

    def dry_run(self, batches):
        if self.elbo is not None:
            return  # the estimator reads the model's terms, which the model's own dry run computed
        try:  # the ELBO is chosen from the traces of every kind of batch the steps will see
            self._build(make_elbo(self.estimator, self.model, self.train.num_particles, _batches(batches),
                                  engine=self.train.engine))
        except (PyrovaeError, ValueError) as e:
            raise ConfigError(f"train.engine = {self.train.engine!r} with train.estimator = {self.estimator!r}: "
                              f"{one_line(str(e), 200)}") from None
        super().dry_run(batches)

    def loss(self, batch, noise, beta, global_size, index=None, update=0):
        if self.elbo is None:
            self._build(make_elbo(self.estimator, self.model, self.train.num_particles, batch,
                                  engine=self.train.engine))
        with _non_finite_from_validation(), warnings.catch_warnings():
            # TraceEnum_ELBO on a minibatch whose guide enumerates nothing (labelled, in a family that
            # takes labels per minibatch) is Trace_ELBO, as it should be: its warning says nothing
            warnings.filterwarnings("ignore", "TraceEnum_ELBO found no sample sites configured for enumeration")
            objective, elbo = self.forward(batch.x, batch.y, batch.labeled, batch.weight, noise, beta)
        return StepLoss.of(objective, elbo, global_size, self.world)


@ALGORITHMS.register("wake_sleep")
class WakeSleepAlgorithm(Algorithm):
    """Wake-sleep (Hinton, Dayan, Frey & Neal 1995) on the same model and recognition model: the
    wake phase trains the decoder on log p(x, z) with z ~ q, the sleep phase the encoder on
    log q(z | x) with (z, x) dreamed from the model; one optimizer step does both
    (:class:`pyrovae.WakeSleep`). The reported ``train_elbo`` and ``train_objective`` are the
    recognition model's ELBO, as in the paper."""

    resume_keys = ("batch_size", "seed")

    def __init__(self, model, train, estimator, num_data, world=1):
        super().__init__(model, train, estimator, num_data, world)
        if world > 1:
            raise ConfigError("train.algorithm = 'wake_sleep' trains in one process")
        if hasattr(getattr(model, "prior", None), "attach"):
            raise ConfigError("train.algorithm = 'wake_sleep': the prior runs the encoder (vamp), so the wake "
                              "phase would train the recognition model; choose another prior")
        self.elbo = WakeSleep(observed_site=model.observed_name())
        self.reporter = get_estimator(estimator)  # the recognition model's ELBO, one particle

    @classmethod
    def check_config(cls, train) -> None:
        _one_particle_no_beta(train, "wake_sleep", "draws one z per datapoint and has no KL term")

    def loss(self, batch, noise, beta, global_size, index=None, update=0):
        elbo = reported_elbo(self.model, batch, self.reporter, self.num_data)
        with _non_finite_from_validation():
            loss = self.elbo.differentiable_loss(self.model.model, self.model.guide, batch, self.num_data)
        step = StepLoss.of(pyro_objective(loss, len(batch), self.num_data), elbo, global_size)
        step.objective_sum = step.elbo_sum  # wake-sleep maximises no bound: it reports the recognition model's ELBO
        return step


@ALGORITHMS.register("mcem")
class MonteCarloEMAlgorithm(Algorithm):
    """Monte Carlo EM (Kingma & Welling 2014, Sec. 5, Figure 3), for the ``vae`` family's generative
    model: for each minibatch, the E-step moves each datapoint's own persistent HMC chain on
    p_theta(z | x_i) (:class:`pyrovae.hmc.Chains`: ``hmc_steps`` transitions of ``num_leapfrog``
    leapfrog steps, the step size tuned to ``target_accept``), then ``weight_updates`` gradient
    steps on theta of -(1/M) sum_i log p_theta(x_i, z_i) (the M-step). The encoder is not trained;
    the reported ``train_objective`` is the mean log p(x, z) at the chains, ``train_elbo`` the
    (untrained) encoder's ELBO. Score the model with :func:`pyrovae.hmc_log_likelihood`.

    :param int num_leapfrog: leapfrog steps per HMC transition (the paper: 10).
    :param int hmc_steps: HMC transitions per E-step.
    :param int weight_updates: gradient steps per minibatch (the paper: 5).
    :param float target_accept: the acceptance rate the step size is tuned to (the paper: 0.9).
    :param float initial_step_size: the leapfrog step size to start from.
    """

    resume_keys = ("batch_size", "seed")
    trains_guide = False

    def __init__(self, model, train, estimator, num_data, world=1, num_leapfrog: int = 10, hmc_steps: int = 1,
                 weight_updates: int = 5, target_accept: float = 0.9, initial_step_size: float = 0.1):
        super().__init__(model, train, estimator, num_data, world)
        if world > 1:
            raise ConfigError("train.algorithm = 'mcem' trains in one process (its chains live in it)")
        if not getattr(model, "has_plain_vae_model", False):
            raise ConfigError("train.algorithm = 'mcem' needs the vae family's model (a prior and a likelihood "
                              f"to run HMC on, no condition); got {type(model).__name__}")
        if weight_updates < 1:
            raise ConfigError(f"train.algorithm.weight_updates = {weight_updates}: must be >= 1")
        self.log_joint = hmc.log_joint
        self.chains = hmc.Chains(model, num_data, num_leapfrog, hmc_steps, target_accept, initial_step_size,
                                  seed=train.seed)
        self.updates_per_batch = weight_updates
        self.latents: Optional[torch.Tensor] = None
        self.reporter = get_estimator(estimator)  # the (untrained) encoder's ELBO, one particle

    @classmethod
    def check_config(cls, train) -> None:
        _one_particle_no_beta(train, "mcem", "has no KL term and one chain per datapoint")

    def loss(self, batch, noise, beta, global_size, index=None, update=0):
        if update == 0:  # the E-step, once per minibatch
            if index is None:
                raise ValueError("mcem: the loop passes the minibatch's indices")
            self.latents = self.chains.advance(index, batch.x).detach()
        elbo = reported_elbo(self.model, batch, self.reporter, self.num_data)
        return StepLoss.of(self.log_joint(self.model, batch.x, self.latents).sum(), elbo, global_size)

    def dry_run(self, batch) -> None:
        """Nothing: a step moves the chains, and the model's dry run checked its terms."""

    def state_dict(self) -> Dict[str, Any]:
        return {"chains": self.chains.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "chains" not in state:
            raise KeyError("the checkpoint holds no chains for train.algorithm = 'mcem'")
        self.chains.load_state_dict(state["chains"])


def _batches(batches) -> List[Batch]:
    return [batches] if isinstance(batches, Batch) else list(batches)


def _one_particle_no_beta(train, name: str, why: str) -> None:
    """Algorithms without an ELBO estimator take one particle and no KL weight (one line otherwise)."""
    if train.beta != 1 or train.kl_warmup_epochs or train.num_particles != 1:
        raise ConfigError(f"train.algorithm = {name!r} {why}: it takes train.num_particles = 1, no train.beta or "
                          "train.kl_warmup_epochs")
    if train.labeled_per_batch or train.labeled_weight != 1:
        raise ConfigError(f"train.algorithm = {name!r} takes no train.labeled_per_batch or train.labeled_weight "
                          "(weighted minibatches are for aevb)")


@contextlib.contextmanager
def _non_finite_from_validation():
    """Pyro's validation meets a NaN before the loss does: that is a non-finite forward pass."""
    try:
        yield
    except ValueError as e:
        if "invalid values" not in str(e):
            raise
        found = re.search(r"parameter (\w+) .*? of distribution (\w+)", str(e).splitlines()[0])
        what = f"{found.group(2)} {found.group(1)}" if found else "distribution parameter"
        raise NonFinite(f"non-finite {what} in the forward pass") from None


def algorithm_name(spec) -> str:
    """``train.algorithm`` is a name or a table ``{ name = ..., options }``."""
    return spec.get("name") if isinstance(spec, dict) else spec


def build_algorithm(model, train, estimator: str, num_data: int, world: int = 1) -> Algorithm:
    """The algorithm ``train.algorithm`` names (with its options), for this model and number of processes."""
    return ALGORITHMS.build(train.algorithm, "train.algorithm", model=model, train=train, estimator=estimator,
                            num_data=num_data, world=world)


def pyro_validation(algorithm: Algorithm):
    """The context the loop runs in: Pyro's validation off where the algorithm does not need it."""
    return contextlib.nullcontext() if algorithm.validates else pyro.validation_enabled(False)
