"""Checkpoints and run folders: atomic writes, RNG state, and ``pyrovae.load(RUN_DIR)``.

``checkpoint.pt`` is a ``torch.save`` of a dict: model and optimizer state, every RNG state
(torch, CUDA, NumPy, Python, and the training loop's noise generator), the epoch / step /
samples counters (with the position inside a half-done epoch), the event shape and the
resolved config. It is written to a temporary file, fsynced and renamed, so a run killed at
any moment leaves the previous checkpoint loadable.
"""

import os
import random
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from .config import Config, config_from_dict
from .errors import ConfigError, RunDirError
from .model import VAE

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.toml"
FORMAT = "pyrovae-checkpoint-1"


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def rng_state() -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path, training_state: Dict[str, Any], event_shape, config: Config) -> None:
    """Write a training state (model, optimizer, rng, counters: what the loop restores) with what
    :func:`load` needs to rebuild the model without its data (event shape, config)."""
    state = {"format": FORMAT, **training_state, "event_shape": list(event_shape), "config": config.to_dict()}
    atomic_write_bytes(Path(path), lambda f: torch.save(state, f))


def read_checkpoint(path) -> Dict[str, Any]:
    """Load a checkpoint dict, or raise :class:`RunDirError` for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: no checkpoint here")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else ""
        raise RunDirError(f"{path}: not a readable checkpoint ({type(e).__name__}: {reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunDirError(f"{path}: not a pyrovae checkpoint")
    return state


def build_vae(model_cfg, event_shape) -> VAE:
    """A :class:`VAE` from a ``[model]`` config and the data's event shape."""
    try:
        return VAE(event_shape, latent_dim=model_cfg.latent_dim, prior=model_cfg.prior,
                   likelihood=model_cfg.likelihood, encoder=model_cfg.encoder, decoder=model_cfg.decoder)
    except (RuntimeError, MemoryError) as e:  # e.g. layers too large to allocate
        raise ConfigError(f"model: cannot build the networks for data of shape {tuple(event_shape)} "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def read_run_config(run_dir) -> Config:
    path = Path(run_dir) / CONFIG
    try:
        return config_from_dict(tomllib.loads(path.read_text()))
    except FileNotFoundError:
        raise RunDirError(f"{run_dir}: not a pyrovae run folder (no {CONFIG})") from None
    except (tomllib.TOMLDecodeError, ConfigError) as e:
        raise RunDirError(f"{path}: {e}") from None


def load(run_dir, device="cpu") -> VAE:
    """The trained :class:`VAE` of a run folder, on ``device`` (the CPU unless told otherwise).

    Example::

        vae = pyrovae.load("runs/digits")
        images = vae.sample(64)
    """
    state = read_checkpoint(Path(run_dir) / CHECKPOINT)
    config = config_from_dict(state["config"])
    vae = build_vae(config.model, state["event_shape"])
    vae.load_state_dict(state["model"])
    return vae.to(device).eval()
