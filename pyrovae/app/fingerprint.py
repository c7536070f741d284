"""The data's fingerprint: shapes and SHA-256 of the values of every split, the labels, the
choice of labelled points and the standardization, recorded in a checkpoint and compared when a
run resumes, is evaluated or encodes (a run is only ever scored on the data it trained on)."""

import hashlib
import math
from typing import Any, Dict, Optional

import numpy as np
import torch

FINGERPRINT_KEYS = frozenset({"train_shape", "train_sha256", "test_shape", "test_sha256", "train_y_sha256",
                              "test_y_sha256", "labeled_sha256", "validation_shape", "validation_sha256",
                              "standardization"})


# -- the data's fingerprint ----------------------------------------------------------------
def _sha256(t: torch.Tensor, dtype) -> str:
    """SHA-256 of a tensor's values as little-endian ``dtype`` (the same bytes on every machine)."""
    values = t.detach().to("cpu", dtype).numpy()
    return hashlib.sha256(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).data).hexdigest()


def data_fingerprint(data) -> Dict[str, Any]:
    """The shapes and SHA-256 of the values (float32, little-endian) of a data set's splits (train,
    test and a validation split where there is one), and of their labels and the label mask where there are any."""
    out: Dict[str, Any] = {}
    for split, points in data.splits.items():  # read in chunks: a streamed split is never held whole
        out[f"{split}_shape"] = list(points.shape)
        out[f"{split}_sha256"] = points.sha256()
    for labels in ("train_y", "test_y", "labeled"):
        t = getattr(data, labels, None)
        if t is not None:
            out[f"{labels}_sha256"] = _sha256(t, torch.int64)
    if getattr(data, "standardization", None) is not None:  # data.standardize: the training split's statistics
        out["standardization"] = data.standardization.as_record()
    return out


def standardization_record_ok(record, fingerprint) -> bool:
    """A fingerprint's standardization record: absent, or finite ``mean`` and positive ``std`` lists, one
    number per feature of the training points."""
    if record is None:
        return True
    shape = fingerprint.get("train_shape") or [0]
    features = math.prod(shape[1:]) if len(shape) > 1 else 0
    return isinstance(record, dict) and set(record) == {"mean", "std"} and all(
        isinstance(record[k], list) and len(record[k]) == features
        and all(isinstance(v, float) and math.isfinite(v) and (k == "mean" or v > 0) for v in record[k])
        for k in ("mean", "std"))


def fingerprint_difference(saved: Dict[str, Any], now: Dict[str, Any]) -> Optional[str]:
    """How the data now differ from the data a checkpoint was made with (None if they do not)."""
    for split in ("train", "test", "validation"):
        a, b = saved.get(f"{split}_shape"), now.get(f"{split}_shape")
        if a != b:
            return f"the {split} split has shape {tuple(b or ())}, the checkpoint's had {tuple(a or ())}"
        if saved.get(f"{split}_sha256") != now.get(f"{split}_sha256"):
            theirs = str(saved.get(f"{split}_sha256"))[:12]
            return (f"the {split} split has the same shape {tuple(b)} but other values "
                    f"(sha256 {str(now.get(f'{split}_sha256'))[:12]}..., the checkpoint's {theirs}...)")
    if saved.get("standardization") != now.get("standardization"):
        return "the standardization (data.standardize) differs"
    for labels, what in (("train_y", "the train split's labels"), ("test_y", "the test split's labels"),
                         ("labeled", "the choice of labelled points (data.labeled)")):
        if saved.get(f"{labels}_sha256") != now.get(f"{labels}_sha256"):
            return f"{what} differ" if saved.get(f"{labels}_sha256") and now.get(f"{labels}_sha256") else \
                f"{what}: {'none now' if saved.get(f'{labels}_sha256') else 'none in the checkpoint'}"
    return None


# -- writing and reading -------------------------------------------------------------------
