"""The run's records, each schema in one place: an epoch's record (a line of ``metrics.jsonl``,
and of every checkpoint's ``metrics``) and the loop's counters (a checkpoint's ``counters``)."""

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional

#: the keys of an epoch's metrics record, in the order they are written
RECORD_KEYS = ("epoch", "step", "samples_seen", "train_elbo", "train_objective", "beta", "test_elbo",
               "test_reconstruction", "test_kl", "active_units", "test_accuracy", "train_seconds",
               "images_per_second", "validation_elbo", "validation_accuracy", "learning_rate")
#: record keys that earlier versions wrote, and their names now (a resumed run renames them)
RENAMED_RECORD_KEYS = {"kl_weight": "beta"}


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


#: the counters' keys and types (a checkpoint's ``counters`` is checked against them)
COUNTERS = {f.name: f.type for f in dataclasses.fields(Counters)}


#: what a training state holds (:meth:`pyrovae.training.loop.Trainer.state`, a checkpoint's first keys)
TRAINING_STATE_KEYS = ("model", "optimizer", "rng", "counters", "algorithm", "schedule")


def epoch_record(**values) -> Dict[str, Any]:
    """An epoch's record (a line of ``metrics.jsonl``): every key of :data:`RECORD_KEYS`, in that
    order, None where ``values`` has none (the test numbers until an evaluation fills them)."""
    unknown = set(values) - set(RECORD_KEYS)
    if unknown:
        raise KeyError(f"not epoch record keys: {sorted(unknown)}")
    return {key: values.get(key) for key in RECORD_KEYS}


def current_record(record: Dict) -> Dict:
    """An epoch's record with the keys earlier versions wrote renamed to today's."""
    return {RENAMED_RECORD_KEYS.get(k, k): v for k, v in record.items()}
