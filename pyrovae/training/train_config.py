"""``[train]``: the settings of a training run (:class:`TrainConfig`), and the rules that tie them
to the data (:func:`check_against_data`), stated once for the config and the trainer alike."""

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

from pyrovae.errors import ConfigError, UnknownNameError, shown
from pyrovae.infer.algorithms import ALGORITHMS, algorithm_name
from pyrovae.infer.elbos import ENGINES
from pyrovae.infer.estimators import estimator_names
from pyrovae.registry import Spec, check_at_least, check_choice
from pyrovae.rng import seed_problem
from pyrovae.training.early_stopping import EarlyStopping
from pyrovae.training.precision import precision_problem

#: the most CPU threads a run may ask torch for (train.num_threads, --threads)
MAX_THREADS = 1024


@dataclass
class TrainConfig:
    """``[train]``: the SVI loop."""

    #: passes over the training split.
    epochs: int = 50
    #: stop after this many steps in all (0: no limit), mid-epoch if need be, with a checkpoint, the
    #: evaluation and the figures as at the end of an epoch; --resume with a larger value continues.
    max_steps: int = 0
    #: the minibatch size M (the global one when data-parallel).
    batch_size: int = 100
    #: aevb (the VAE's SVI, Kingma & Welling 2014), wake_sleep (Hinton et al. 1995; same model and encoder) or
    #: mcem (Monte Carlo EM with per-datapoint HMC chains; options as a table: { name = "mcem", weight_updates = 5 }).
    algorithm: Spec = "aevb"
    #: auto, analytic (estimator B, TraceMeanField_ELBO), mc (estimator A, Trace_ELBO) or iwae.
    estimator: str = "auto"
    #: L samples per datapoint (k for iwae).
    num_particles: int = 1
    #: with a label budget (data.labeled): k labelled points drawn into every minibatch, weighted so
    #: the objective stays unbiased (semi-supervised families, where labels are rare); 0: none.
    labeled_per_batch: int = 0
    #: with a label budget: each labelled point counts this many times in the objective (as if the labelled
    #: set were copied); "balanced": N_unlabelled / N_labelled, the labelled data weighing as much as the rest.
    #: For a family with labels = "per_minibatch" (Pyro's M2): labelled minibatches come this many times as
    #: often as the data's proportion gives (the labelled set cycled), under either engine.
    labeled_weight: Union[float, str] = 1.0
    #: the weight of the KL term (beta-VAE, Higgins et al. 2017); 1 is the ELBO.
    beta: float = 1.0
    #: linear warm-up of the KL weight from 0 to beta over this many epochs (0: none).
    kl_warmup_epochs: int = 0
    #: seeds initialisation, data order and all sampling; in [0, 2^32).
    seed: int = 0
    #: cpu, cuda or cuda:N.
    device: str = "cpu"
    #: evaluate the test ELBO (and the validation ELBO) every this many epochs (and after the last).
    eval_every: int = 5
    #: stop when the metric has not improved for patience evaluations, and keep the best epoch as best.pt:
    #: { metric = "validation_elbo", patience = 10, min_delta = 0.0 }, the metric one of validation_elbo,
    #: validation_accuracy, test_elbo, test_accuracy or train_elbo (higher is better), patience counted in
    #: evaluations (see pyrovae.training.early_stopping); absent: no early stopping.
    early_stopping: Optional[Dict[str, Any]] = None
    #: particles per test point for the test ELBO.
    eval_particles: int = 1
    #: a tqdm progress bar with the running loss.
    progress: bool = True
    #: torch: the estimator's loss written with plain tensors (fast); pyro: Pyro's ELBO on model and guide.
    engine: str = "torch"
    #: on a non-finite loss or gradient: stop, or roll back to the last completed epoch.
    on_nan: str = "stop"
    #: rollback multiplies the learning rate by this.
    rollback_lr_factor: float = 0.5
    #: after this many rollbacks the run stops as with on_nan = "stop".
    max_rollbacks: int = 3
    #: CPU threads for torch's operations; 0: torch's choice (one per core). On a shared, busy CPU
    #: fewer threads than cores avoid oversubscription (--threads on the command line).
    num_threads: int = 0
    #: "32" (float32), "bf16-mixed" (the step's networks under autocast to bfloat16, CPU and CUDA) or
    #: "16-mixed" (float16 with a gradient scaler, CUDA); the log-densities, the KL, the ELBO and every
    #: evaluation stay in float32 (pyrovae.training.precision). The number 32 is "32".
    precision: Union[str, int] = "32"

    def check(self):
        check_at_least("train.epochs", self.epochs, 1)
        check_at_least("train.max_steps", self.max_steps, 0)
        check_at_least("train.batch_size", self.batch_size, 1)
        ALGORITHMS.split(self.algorithm, "train.algorithm")
        check_choice("train.estimator", self.estimator, estimator_names(), UnknownNameError)
        check_at_least("train.num_particles", self.num_particles, 1)
        check_at_least("train.labeled_per_batch", self.labeled_per_batch, 0)
        if self.labeled_weight != "balanced" and not (isinstance(self.labeled_weight, (int, float))
                                                      and not isinstance(self.labeled_weight, bool)
                                                      and 0 < self.labeled_weight < 1e12):
            raise ConfigError(f"train.labeled_weight = {shown(self.labeled_weight)}: must be a number > 0 or "
                              "'balanced'")
        if self.labeled_per_batch >= self.batch_size:
            raise ConfigError(f"train.labeled_per_batch = {self.labeled_per_batch}: must be less than "
                              f"train.batch_size ({self.batch_size})")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ConfigError(f"train.beta = {shown(self.beta)}: must be a finite number >= 0")
        check_at_least("train.kl_warmup_epochs", self.kl_warmup_epochs, 0)
        if self.estimator == "iwae" and (self.beta != 1 or self.kl_warmup_epochs):
            raise ConfigError("train.estimator = 'iwae' weighs whole importance weights: it takes no train.beta "
                              "or train.kl_warmup_epochs; use 'analytic' or 'mc' for KL annealing")
        ALGORITHMS.get(algorithm_name(self.algorithm)).check_config(self)
        if seed_problem(self.seed):
            raise ConfigError(f"train.seed = {self.seed}: {seed_problem(self.seed)}")
        check_at_least("train.eval_every", self.eval_every, 1)
        check_at_least("train.eval_particles", self.eval_particles, 1)
        if self.early_stopping is not None:
            EarlyStopping.from_spec(self.early_stopping)
        check_choice("train.on_nan", self.on_nan, ("stop", "rollback"))
        check_choice("train.engine", self.engine, ENGINES)
        if not 0 < self.rollback_lr_factor < 1:
            raise ConfigError(f"train.rollback_lr_factor = {shown(self.rollback_lr_factor)}: must be in (0, 1)")
        check_at_least("train.max_rollbacks", self.max_rollbacks, 0)
        check_at_least("train.num_threads", self.num_threads, 0)
        if self.num_threads > MAX_THREADS:
            raise ConfigError(f"train.num_threads = {shown(self.num_threads)}: must be <= {MAX_THREADS}")
        if self.precision == 32 and not isinstance(self.precision, bool):
            self.precision = "32"  # --set train.precision=32 reads a number
        if precision_problem(self.precision, self.device):
            raise ConfigError(f"train.precision = {shown(self.precision)}: "
                              f"{precision_problem(self.precision, self.device)}")
        if not (self.device == "cpu" or self.device == "cuda"
                or (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ConfigError(f"train.device = {shown(self.device)}: valid: cpu, cuda, cuda:N")


def check_against_data(cfg: TrainConfig, has_labels: bool, has_validation: bool) -> None:
    """The ``[train]`` rules that depend on the data, stated once: :meth:`pyrovae.Config.check`
    applies them before any data is read (from ``[data]``), the :class:`Trainer` on the data it is
    given. ``has_labels``: a label budget (``data.labeled``); ``has_validation``: a validation split."""
    if (cfg.labeled_per_batch or cfg.labeled_weight != 1) and not has_labels:
        raise ConfigError("train.labeled_per_batch and train.labeled_weight need a label budget (data.labeled); "
                          "with every label usable there is no labelled part to weigh")
    if cfg.early_stopping is not None:
        metric = EarlyStopping.from_spec(cfg.early_stopping).metric
        if metric.startswith("validation") and not has_validation:
            raise ConfigError(f"train.early_stopping.metric = {metric!r} needs a validation split: "
                              "set data.validation_fraction (e.g. 0.1)")


def resolved_labeled_weight(labeled_weight, num_train: int, num_labeled: int) -> float:
    """``train.labeled_weight`` as a number: ``"balanced"`` is N_unlabelled / N_labelled."""
    if labeled_weight == "balanced":
        return max(num_train - num_labeled, 1) / max(num_labeled, 1)
    return float(labeled_weight)
