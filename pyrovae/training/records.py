"""An epoch's record: the keys of a line of ``metrics.jsonl`` (and of every checkpoint's
``metrics``), made in one place."""

from typing import Any, Dict

#: the keys of an epoch's metrics record, in the order they are written
RECORD_KEYS = ("epoch", "step", "samples_seen", "train_elbo", "train_objective", "beta", "test_elbo",
               "test_reconstruction", "test_kl", "active_units", "test_accuracy", "train_seconds",
               "images_per_second", "validation_elbo", "validation_accuracy", "learning_rate")
#: record keys that earlier versions wrote, and their names now (a resumed run renames them)
RENAMED_RECORD_KEYS = {"kl_weight": "beta"}


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
