"""Device names (``cpu``, ``cuda``, ``cuda:N``) checked against the machine."""

import torch

from .errors import ConfigError, shown


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; asking for CUDA where there is none is a ConfigError
    that names ``key`` (the config key, or the flag or argument the name came from)."""
    name = str(name)
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit() and len(name) < 12):
        if not torch.cuda.is_available():
            raise ConfigError(f"{key} = {shown(name)}: CUDA is not available on this machine; use 'cpu'")
        index = int(name[5:]) if name.startswith("cuda:") else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{key} = {shown(name)}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif name != "cpu":
        raise ConfigError(f"{key} = {shown(name)}: valid: cpu, cuda, cuda:N")
    return torch.device(name)
