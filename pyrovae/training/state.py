"""A model's state outside the training steps: checked loading of its parameters (names, shapes,
dtypes and finite values, each refusal one line), and its buffers kept through the passes that
are not training steps."""

import contextlib
from typing import Dict

import torch

from pyrovae.errors import RunDirError, shown


def load_model_state(module: torch.nn.Module, saved: Dict[str, torch.Tensor], where) -> None:
    """``module.load_state_dict(saved)``; missing or unexpected keys and other shapes are one line."""
    mine = module.state_dict()
    missing = [k for k in mine if k not in saved]
    unexpected = [k for k in saved if k not in mine]
    if missing or unexpected:
        names = ", ".join(shown(k, 40) for k in (missing or unexpected)[:3])
        raise RunDirError(f"{where}: the checkpoint's model {'lacks' if missing else 'has unknown'} parameters "
                          f"({names}{', ...' if len(missing or unexpected) > 3 else ''}); "
                          "it does not match its config (a model built in Python loads with "
                          "pyrovae.load(run, model=...))")
    for k, t in mine.items():
        if tuple(saved[k].shape) != tuple(t.shape):
            raise RunDirError(f"{where}: the checkpoint's {shown(k, 60)} has shape {tuple(saved[k].shape)}, "
                              f"the config's model needs {tuple(t.shape)}")
        if saved[k].dtype != t.dtype:
            raise RunDirError(f"{where}: the checkpoint's {shown(k, 60)} is {saved[k].dtype}, the config's model "
                              f"holds {t.dtype}")
        if saved[k].is_floating_point() and not bool(torch.isfinite(saved[k]).all()):
            raise RunDirError(f"{where}: the checkpoint's {shown(k, 60)} holds non-finite values (NaN or infinite); "
                              "a model with them gives no meaningful numbers")
    module.load_state_dict(saved)


@contextlib.contextmanager
def kept_buffers(module: torch.nn.Module):
    """Run passes that are not training steps (the checks when a run is built) in training mode
    and leave the module's buffers as they were: a ``BatchNorm1d``'s running statistics move
    only with the steps, so that a resumed run, which is built again, continues bit for bit."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
