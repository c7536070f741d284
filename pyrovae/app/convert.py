"""``pyrovae convert-checkpoint RUN_DIR --trust``: an older pyrovae checkpoint (format 1), from a
source the user trusts, rewritten as today's format."""

import dataclasses
from pathlib import Path

import torch

from pyrovae.app.checkpoint import FORMAT, OLD_FORMATS, _torch_load, checkpoint_problem, read_checkpoint
from pyrovae.app.files import (
    CHECKPOINT,
    METRICS,
    RunLock,
    atomic_write_bytes,
    read_metrics,
    write_metrics,
)
from pyrovae.app.fingerprint import data_fingerprint
from pyrovae.app.run_record import record_config
from pyrovae.errors import RunDirError
from pyrovae.rng import plain_numpy_state, plain_python_state


def convert_checkpoint(run_dir, data=None) -> Path:
    """Rewrite a run folder's format-1 checkpoint in the current, code-free format.

    **This unpickles the old file with** ``weights_only=False``, **which runs any code it
    carries**: call it only on a checkpoint from a source you trust (the CLI asks for
    ``--trust``). The RNG states become tensors, the metrics records are taken from
    ``metrics.jsonl`` up to the checkpoint's epoch, and the data fingerprint is taken from
    ``data`` (a :class:`~pyrovae.Dataset`; by default the data the run's config names, as they
    are now). The result is read back with :func:`read_checkpoint` before it replaces the old
    file. Returns the checkpoint's path.
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise RunDirError(f"{path}: no checkpoint here")
    try:
        current = _torch_load(path)
    except Exception:
        current = None  # not loadable without unpickling objects: possibly an older checkpoint
    if current is not None:
        done = isinstance(current, dict) and current.get("format") == FORMAT
        raise RunDirError(f"{path}: " + ("already in the current format; nothing to convert" if done
                                         else "not an older pyrovae checkpoint; nothing to convert"))
    try:
        old = _torch_load(path, weights_only=False)  # trusted by the caller: this may run code
    except Exception as e:
        raise RunDirError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(old, dict) or old.get("format") not in OLD_FORMATS:
        raise RunDirError(f"{path}: not an older pyrovae checkpoint; nothing to convert")
    rng = old["rng"]
    new_rng = {"torch": rng["torch"], "cuda": list(rng.get("cuda", [])), "noise": rng["noise"],
               "numpy": plain_numpy_state(rng["numpy"]), "python": plain_python_state(rng["python"])}
    counters = {"rollbacks": 0, **old["counters"]}
    records = []
    if (run_dir / METRICS).is_file():
        by_epoch = {r["epoch"]: r for r in read_metrics(run_dir)}
        records = [by_epoch[e] for e in range(1, counters["epoch"] + 1) if e in by_epoch]
        if len(records) != counters["epoch"]:
            raise RunDirError(f"{run_dir / METRICS}: lacks records of some of the checkpoint's {counters['epoch']} "
                              "epochs; cannot convert")
    config = record_config(old["config"], keep_destinations=True)  # the old record, rewritten: nothing it names runs
    if data is None:  # and nothing it names is followed: no download
        data = dataclasses.replace(config, data=dataclasses.replace(config.data, download=False)).load_data()
    state = {"format": FORMAT, "model": old["model"], "optimizer": old["optimizer"], "rng": new_rng,
             "counters": counters, "event_shape": list(old["event_shape"]), "num_classes": None,
             "config": config.to_dict(),
             "data": data_fingerprint(data), "metrics": records}
    problem = checkpoint_problem(state)
    if problem:
        raise RunDirError(f"{path}: cannot convert: {problem}")
    with RunLock(run_dir, "convert"):
        atomic_write_bytes(path, lambda f: torch.save(state, f), "; the old checkpoint is kept")
        write_metrics(run_dir, records)
    read_checkpoint(path)
    return path
