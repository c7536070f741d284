"""Learning-rate schedules by name (``optim.schedule``), built on ``torch.optim.lr_scheduler``.

With base rate eta_0 (``optim.lr``), epoch e (completed epochs), step s and T = ``t_max`` epochs
(default ``train.epochs``), S steps per epoch:

- ``constant`` (the default): eta_0 throughout.
- ``step`` (``StepLR``, stepped per epoch): eta_0 * gamma^floor(e / step_size).
- ``exponential`` (``ExponentialLR``, per epoch): eta_0 * gamma^e.
- ``cosine`` (``CosineAnnealingLR``, per epoch; Loshchilov & Hutter 2017):
  eta_min + (eta_0 - eta_min) (1 + cos(pi e / T)) / 2.
- ``warmup_cosine`` (``LambdaLR``, per step): a linear warm-up from eta_0 * start_factor to
  eta_0 over W = warmup_epochs * S steps, then the cosine above over the steps from W to T * S
  (Goyal et al. 2017), in closed form: eta_min + (eta_0 - eta_min) (1 + cos(pi (s - W) / (T S - W))) / 2,
  held at eta_min after T epochs.
- ``plateau`` (``ReduceLROnPlateau`` in mode ``max``): the rate times ``factor`` when the
  metric (``validation_elbo`` where there is a validation split, else ``test_elbo``) has not
  risen by more than ``threshold`` (in its units: nats) for ``patience`` evaluations; stepped at each
  evaluation of a whole epoch (every ``train.eval_every`` epochs).

The scheduler's state is part of every checkpoint, so a resumed run continues its schedule bit
for bit; a run resumes only with the schedule it started with (``t_max`` defaults to the
``train.epochs`` of the run's start). A schedule registered with ``@SCHEDULES.register(name)``
returns a :class:`Schedule`.
"""

import math
from typing import Any, Dict, Optional

import torch

from pyrovae.errors import ConfigError, shown
from pyrovae.registry import Registry

SCHEDULES = Registry("schedule", context=("optimizer", "epochs", "steps_per_epoch", "has_validation"))
#: what ``plateau`` may watch (all higher-is-better); ``auto``: validation_elbo, else test_elbo
PLATEAU_METRICS = ("auto", "validation_elbo", "test_elbo", "validation_accuracy", "test_accuracy")


class Schedule:
    """A torch scheduler and when it steps: ``"step"`` (after every minibatch), ``"epoch"`` (after
    every whole epoch), ``"evaluation"`` (after every whole epoch that was evaluated, on the record's
    ``metric``), or never (``scheduler`` None: constant)."""

    def __init__(self, scheduler=None, every: Optional[str] = None, metric: Optional[str] = None):
        if every not in (None, "step", "epoch", "evaluation"):
            raise ValueError(f"a schedule steps per 'step', 'epoch' or 'evaluation', not {every!r}")
        self.scheduler, self.every, self.metric = scheduler, every, metric

    def after_step(self) -> None:
        if self.every == "step":
            self.scheduler.step()

    def after_epoch(self, record: Dict[str, Any]) -> None:
        """A whole epoch ended with ``record`` (evaluated when due)."""
        if self.every == "epoch":
            self.scheduler.step()
        elif self.every == "evaluation" and record.get(self.metric) is not None:
            self.scheduler.step(record[self.metric])

    def scale(self, factor: float) -> None:
        """Multiply the schedule's own base rates too (a rollback lowers the learning rate for good)."""
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]

    def state_dict(self) -> Dict[str, Any]:
        return {} if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """A checkpoint's scheduler state: its keys must be this scheduler's (it is set as attributes)."""
        mine = self.state_dict()
        if set(state) != set(mine):
            raise ValueError(f"the checkpoint's schedule state has keys {sorted(state)[:6]}, this schedule's "
                             f"{sorted(mine)[:6]}")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


def _positive(name, value):
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _fraction(name, value, low_open=True):
    if not (0 < value <= 1 if low_open else 0 <= value < 1):
        raise ValueError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1)'}, got {value}")


def _horizon(t_max: Optional[float], epochs: int) -> float:
    t = epochs if t_max is None else t_max
    _positive("t_max", t)
    return float(t)


@SCHEDULES.register("constant")
def constant(optimizer):
    """The learning rate ``optim.lr`` throughout."""
    return Schedule()


@SCHEDULES.register("step")
def step(optimizer, step_size: int = 10, gamma: float = 0.1):
    """lr * gamma^floor(epoch / step_size), per epoch."""
    _positive("step_size", step_size)
    _positive("gamma", gamma)
    return Schedule(torch.optim.lr_scheduler.StepLR(optimizer, step_size, gamma), "epoch")


@SCHEDULES.register("exponential")
def exponential(optimizer, gamma: float = 0.95):
    """lr * gamma^epoch, per epoch."""
    _positive("gamma", gamma)
    return Schedule(torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma), "epoch")


@SCHEDULES.register("cosine")
def cosine(optimizer, epochs: int, t_max: Optional[float] = None, eta_min: float = 0.0):
    """Cosine annealing from lr to eta_min over t_max epochs (default: train.epochs), per epoch."""
    if not eta_min >= 0:
        raise ValueError(f"eta_min must be >= 0, got {eta_min}")
    horizon = _horizon(t_max, epochs)
    if horizon != int(horizon):
        raise ValueError(f"t_max must be a whole number of epochs for 'cosine' (stepped per epoch), got {t_max}")
    return Schedule(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, int(horizon), eta_min), "epoch")


class WarmupCosine:
    """The factor of ``warmup_cosine`` at step s (see the module docstring); a picklable callable."""

    def __init__(self, warmup_steps: float, total_steps: float, start_factor: float, floor: float):
        self.warmup_steps, self.total_steps, self.start_factor, self.floor = (warmup_steps, total_steps, start_factor,
                                                                              floor)

    def __call__(self, s: int) -> float:
        if s < self.warmup_steps:
            return self.start_factor + (1 - self.start_factor) * s / self.warmup_steps
        t = min(1.0, (s - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1))
        return self.floor + (1 - self.floor) * (1 + math.cos(math.pi * t)) / 2


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float = 1.0,
                  t_max: Optional[float] = None, eta_min: float = 0.0, start_factor: float = 0.01):
    """A linear warm-up over warmup_epochs, then cosine annealing to eta_min at t_max epochs, per step."""
    horizon = _horizon(t_max, epochs)
    if not 0 <= warmup_epochs < horizon:
        raise ValueError(f"warmup_epochs must be in [0, t_max = {horizon:g}), got {warmup_epochs}")
    _fraction("start_factor", start_factor)
    lr = optimizer.param_groups[0]["lr"]
    if not 0 <= eta_min <= lr:
        raise ValueError(f"eta_min must be in [0, optim.lr = {lr:g}], got {eta_min}")
    factor = WarmupCosine(warmup_epochs * steps_per_epoch, horizon * steps_per_epoch, start_factor, eta_min / lr)
    return Schedule(torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "step")


@SCHEDULES.register("plateau")
def plateau(optimizer, has_validation: bool, metric: str = "auto", factor: float = 0.1, patience: int = 10,
            threshold: float = 0.01, min_lr: float = 0.0, cooldown: int = 0):
    """The rate times factor after patience evaluations without a rise in the metric, per evaluation."""
    if metric not in PLATEAU_METRICS:
        raise ValueError(f"metric must be one of {', '.join(PLATEAU_METRICS)}, got {shown(metric)}")
    if metric == "auto":
        metric = "validation_elbo" if has_validation else "test_elbo"
    if metric.startswith("validation") and not has_validation:
        raise ValueError(f"metric {metric!r} needs a validation split (data.validation_fraction > 0)")
    if not 0 < factor < 1:
        raise ValueError(f"factor must be in (0, 1), got {factor}")
    if patience < 0 or cooldown < 0 or threshold < 0 or min_lr < 0:
        raise ValueError("patience, cooldown, threshold and min_lr must be >= 0")
    # an absolute threshold, in the metric's units: torch's relative one counts an unchanged negative ELBO as a rise
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "max", factor, patience, threshold, "abs",
                                                           cooldown=cooldown, min_lr=min_lr)
    return Schedule(scheduler, "evaluation", metric)


def schedule_spec(optim: Dict[str, Any]):
    """The ``schedule`` of an ``[optim]`` spec (``constant`` when it has none)."""
    return optim.get("schedule", "constant") if isinstance(optim, dict) else "constant"


def build_schedule(spec, optimizer, epochs: int, steps_per_epoch: int, has_validation: bool) -> Schedule:
    """The :class:`Schedule` a spec such as ``{"name": "cosine", "eta_min": 1e-5}`` names, over ``optimizer``."""
    schedule = SCHEDULES.build(spec, "optim.schedule", optimizer=optimizer, epochs=epochs,
                               steps_per_epoch=steps_per_epoch, has_validation=has_validation)
    if not isinstance(schedule, Schedule):
        raise ConfigError(f"optim.schedule: {shown(spec)} built a {type(schedule).__name__}, not a Schedule")
    return schedule
