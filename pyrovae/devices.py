"""Devices: names (``cpu``, ``cuda``, ``cuda:N``) checked against the machine, and the memory free on one."""

import os
from pathlib import Path

import torch

from pyrovae.errors import ConfigError, shown


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


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def available_bytes(device="cpu") -> int:
    """Memory free for new tensors on ``device``: the GPU's free memory, or on the CPU the
    smaller of the system's available memory and what the process's cgroup still allows."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            candidates.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return 1 << 62  # unknown: no refusal
    return max(0, min(candidates))
