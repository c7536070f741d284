"""The run's state, each schema typed once: an epoch's record (a line of ``metrics.jsonl``, and of
every checkpoint's ``metrics``), the loop's counters (a checkpoint's ``counters``) and the training
state (what a checkpoint holds to continue a run bit for bit). Each dataclass owns its keys, its
serialization (``as_dict``) and the check of what a file holds (``problem``), which the
checkpoint's schema (:mod:`pyrovae.app.checkpoint`), ``metrics.jsonl`` and resume all read."""

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class EpochRecord:
    """An epoch's numbers, in the order ``metrics.jsonl`` writes them: the counters at its end,
    the training ELBO and objective per point (nats), the KL weight, the test numbers (None until
    an evaluation fills them), the speed and the learning rate."""

    epoch: int
    step: Optional[int] = None
    samples_seen: Optional[int] = None
    train_elbo: Optional[float] = None
    train_objective: Optional[float] = None
    beta: Optional[float] = None
    test_elbo: Optional[float] = None
    test_reconstruction: Optional[float] = None
    test_kl: Optional[float] = None
    active_units: Optional[int] = None
    test_accuracy: Optional[float] = None
    train_seconds: Optional[float] = None
    images_per_second: Optional[float] = None
    validation_elbo: Optional[float] = None
    validation_accuracy: Optional[float] = None
    learning_rate: Optional[float] = None

    #: record keys that earlier versions wrote, and their names now (a resumed run renames them)
    RENAMED = {"kl_weight": "beta"}

    def as_dict(self) -> Dict[str, Any]:
        """The record as the loop keeps it (``Trainer.metrics``) and writes it: every key, in order."""
        return dataclasses.asdict(self)

    @classmethod
    def problem(cls, record) -> Optional[str]:
        """What is wrong with a record read from a file (None if nothing): known keys (today's or
        earlier names), a whole ``epoch``, each value a number, a bool or None."""
        if not isinstance(record, dict) or not _whole(record.get("epoch")):
            return "a record is a table with a whole epoch"
        unknown = set(record) - set(RECORD_KEYS) - set(cls.RENAMED)
        if unknown:
            return f"unknown record key {sorted(map(str, unknown))[0]!r}"
        if not all(v is None or isinstance(v, (bool, float)) or (_whole(v) and abs(v) < 2**63)
                   for v in record.values()):
            return "a record's values are numbers, booleans or null"
        return None

    @classmethod
    def current(cls, record: Dict) -> Dict:
        """A record as earlier versions wrote it, with today's key names."""
        return {cls.RENAMED.get(k, k): v for k, v in record.items()}


#: the keys of an epoch's metrics record, in the order they are written
RECORD_KEYS = tuple(f.name for f in dataclasses.fields(EpochRecord))


def epoch_record(**values) -> Dict[str, Any]:
    """An epoch's record (:class:`EpochRecord`) as a dict: every key, in order, None where
    ``values`` has none."""
    return EpochRecord(**values).as_dict()


@dataclass
class Counters:
    """The loop's counters (a checkpoint's ``counters``, :attr:`pyrovae.training.loop.Trainer.counters`):
    ``epoch``, ``step`` and ``samples_seen`` count completed work; ``epoch_step`` and the
    ``epoch_*`` sums hold a half-done epoch (after an interruption or a step budget); ``rollbacks``
    counts the restarts of an epoch at a smaller learning rate. Read and set as attributes or,
    as callbacks written for a dict do, by key (``trainer.counters["epoch"]``)."""

    epoch: int = 0
    step: int = 0
    samples_seen: int = 0
    epoch_step: int = 0
    rollbacks: int = 0
    epoch_loss: float = 0.0
    epoch_elbo: float = 0.0
    epoch_seconds: float = 0.0

    def __getitem__(self, key: str):
        if key not in COUNTERS:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value) -> None:
        if key not in COUNTERS:
            raise KeyError(key)
        setattr(self, key, value)

    def update(self, values: Optional[Dict[str, Any]] = None, **more) -> None:
        for key, value in {**(values or {}), **more}.items():
            self[key] = value

    def as_dict(self) -> Dict[str, Any]:
        """As a checkpoint holds them: a dict of numbers."""
        return dataclasses.asdict(self)

    @classmethod
    def problem(cls, values) -> Optional[str]:
        """What is wrong with counters read from a file (None if nothing): exactly these keys, each
        of its type: a whole number in [0, 2^62), or a finite float for the sums (an ELBO, and so
        ``epoch_loss``, may have either sign) and the seconds."""
        if not isinstance(values, dict) or set(values) != set(COUNTERS):
            return f"the counters are {', '.join(COUNTERS)}"
        for key, kind in COUNTERS.items():
            v = values[key]
            if kind is int and not (_whole(v) and 0 <= v < 2**62):
                return f"counter {key!r} is a whole number in [0, 2^62)"
            if kind is float and not (isinstance(v, float) and math.isfinite(v) and abs(v) < 2**62):
                return f"counter {key!r} is a finite number"
        return None


#: the counters' keys and types
COUNTERS = {f.name: f.type for f in dataclasses.fields(Counters)}


@dataclass
class TrainingState:
    """What a checkpoint holds to continue a run bit for bit (:meth:`pyrovae.training.loop.Trainer.state`,
    a checkpoint's first keys): the model's and the optimizer's state dicts, every RNG's state, the
    counters, the algorithm's own state (mcem's chains), the learning-rate schedule's and the
    gradient scaler's (``train.precision = "16-mixed"``; empty otherwise)."""

    model: Dict[str, Any]
    optimizer: Dict[str, Any]
    rng: Dict[str, Any]
    counters: Dict[str, Any]
    algorithm: Dict[str, Any]
    schedule: Dict[str, Any]
    scaler: Dict[str, Any]

    #: keys older checkpoints may lack (algorithms without state of their own, no schedules, no scaler): empty then
    OPTIONAL = ("algorithm", "schedule", "scaler")

    def as_dict(self) -> Dict[str, Any]:
        return {key: getattr(self, key) for key in TRAINING_STATE_KEYS}  # shallow: the tensors as they are

    @classmethod
    def of(cls, checkpoint: Dict[str, Any]) -> "TrainingState":
        """The training state in a checkpoint's dict (an older one's missing parts empty)."""
        return cls(**{key: checkpoint.get(key, {}) if key in cls.OPTIONAL else checkpoint[key]
                      for key in TRAINING_STATE_KEYS})


#: what a training state holds, in order
TRAINING_STATE_KEYS = tuple(f.name for f in dataclasses.fields(TrainingState))
