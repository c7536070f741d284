"""Early stopping and the best epoch (``train.early_stopping``), read from the metrics records.

``train.early_stopping = { metric = "validation_elbo", patience = 10, min_delta = 0.0 }``: at
each evaluation of a whole epoch the metric (higher is better) either improves on the best
value so far by more than ``min_delta``, and that epoch becomes the best, or it does not; after
``patience`` evaluations in a row without an improvement the run stops (as Lightning's
``EarlyStopping``: patience counts evaluations, one every ``train.eval_every`` epochs).

Everything here is a function of the run's metrics records, which every checkpoint holds, so
a resumed run knows its best epoch and its count without state of its own, and a run stopped
early and resumed with a larger ``patience`` continues. The best epoch's whole training state is
``best.pt`` (:class:`pyrovae.app.runfolder.RunFolder`).
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

from pyrovae.errors import ConfigError, shown
from pyrovae.registry import check_keys

#: the record keys early stopping (and the best checkpoint) may follow, all higher-is-better
STOPPING_METRICS = ("validation_elbo", "validation_accuracy", "test_elbo", "test_accuracy", "train_elbo")


@dataclass(frozen=True)
class EarlyStopping:
    """``train.early_stopping``: the metric, the patience in evaluations, the least improvement."""

    metric: str = "validation_elbo"
    patience: int = 10
    min_delta: float = 0.0

    @classmethod
    def from_spec(cls, spec, where: str = "train.early_stopping") -> "EarlyStopping":
        """A table (``metric``, ``patience``, ``min_delta``; absent keys take their defaults), each
        key checked, every problem one line."""
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} = {shown(spec)}: expected a table such as "
                              "{ metric = \"validation_elbo\", patience = 10, min_delta = 0.0 }")
        check_keys(where, spec, {f.name for f in dataclasses.fields(cls)})
        out = cls(**spec)
        if out.metric not in STOPPING_METRICS:
            raise ConfigError(f"{where}.metric = {shown(out.metric)}: valid: {', '.join(STOPPING_METRICS)}")
        if not isinstance(out.patience, int) or isinstance(out.patience, bool) or not 1 <= out.patience < 2**31:
            raise ConfigError(f"{where}.patience = {shown(out.patience)}: must be a whole number >= 1")
        if (not isinstance(out.min_delta, (int, float)) or isinstance(out.min_delta, bool)
                or not (0 <= out.min_delta < math.inf)):
            raise ConfigError(f"{where}.min_delta = {shown(out.min_delta)}: must be a finite number >= 0")
        return out


@dataclass(frozen=True)
class Best:
    """The best value of a metric so far, its epoch, and the evaluations since it without an improvement."""

    value: float
    epoch: int
    since: int


def best_so_far(records: List[Dict], metric: str, min_delta: float = 0.0) -> Optional[Best]:
    """The best epoch by ``metric`` over ``records`` (in order; those without the metric are not
    evaluations): the first evaluation, then each one that beats the best by more than ``min_delta``.
    None before the first evaluation."""
    best = None
    for record in records:
        value = record.get(metric)
        if value is None:
            continue
        if best is None or value > best.value + min_delta:
            best = Best(float(value), int(record["epoch"]), 0)
        else:
            best = Best(best.value, best.epoch, best.since + 1)
    return best
