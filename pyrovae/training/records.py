"""The run's records, each schema in one place: an epoch's record (a line of ``metrics.jsonl``,
and of every checkpoint's ``metrics``) and the loop's counters (a checkpoint's ``counters``)."""

from typing import Any, Dict

#: the keys of an epoch's metrics record, in the order they are written
RECORD_KEYS = ("epoch", "step", "samples_seen", "train_elbo", "train_objective", "beta", "test_elbo",
               "test_reconstruction", "test_kl", "active_units", "test_accuracy", "train_seconds",
               "images_per_second", "validation_elbo", "validation_accuracy", "learning_rate")
#: record keys that earlier versions wrote, and their names now (a resumed run renames them)
RENAMED_RECORD_KEYS = {"kl_weight": "beta"}


#: the loop's counters and their types: epoch, step and samples_seen count completed work;
#: epoch_step and the epoch_* sums hold a half-done epoch (after an interruption or a step budget)
COUNTERS = {"epoch": int, "step": int, "samples_seen": int, "epoch_step": int, "rollbacks": int,
            "epoch_loss": float, "epoch_elbo": float, "epoch_seconds": float}


#: what a training state holds (:meth:`pyrovae.training.loop.Trainer.state`, a checkpoint's first keys)
TRAINING_STATE_KEYS = ("model", "optimizer", "rng", "counters", "algorithm", "schedule")


def fresh_counters() -> Dict[str, Any]:
    """The counters of a run before its first step: every :data:`COUNTERS` key at zero."""
    return {key: kind(0) for key, kind in COUNTERS.items()}


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
