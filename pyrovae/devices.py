"""Devices: names (``cpu``, ``cuda``, ``cuda:N``) checked against the machine, and the memory free on one."""

import os
from pathlib import Path
from typing import List

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


def _cgroup_room() -> List[int]:
    """What the process's memory cgroups (and their parents) still allow, in bytes: under cgroup
    v2, memory.max - memory.current; under v1, memory.limit_in_bytes - (memory.usage_in_bytes -
    inactive page cache, which the kernel reclaims before it kills), for every level that has a limit."""
    rooms = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        parts = [p for p in path.strip().split("/") if p]
        if controllers == "":  # v2: one unified hierarchy
            levels = [Path("/sys/fs/cgroup").joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
            for level in levels:
                try:
                    limit = (level / "memory.max").read_text().strip()
                    if limit != "max":
                        rooms.append(int(limit) - int((level / "memory.current").read_text()))
                except (OSError, ValueError):
                    pass
        elif "memory" in controllers.split(","):
            for i in range(len(parts), -1, -1):
                level = Path("/sys/fs/cgroup/memory").joinpath(*parts[:i])
                try:
                    limit = int((level / "memory.limit_in_bytes").read_text())
                    if limit >= 1 << 60:  # no limit at this level
                        continue
                    usage = int((level / "memory.usage_in_bytes").read_text())
                    stat = dict(line.split() for line in (level / "memory.stat").read_text().splitlines())
                    rooms.append(limit - usage + int(stat.get("total_inactive_file", stat.get("inactive_file", 0))))
                except (OSError, ValueError):
                    pass
    return rooms


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
    candidates.extend(_cgroup_room())
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            return 1 << 62  # unknown: no refusal
    return max(0, min(candidates))



def release_freed_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim(0)``); True where
    there is glibc. Called once before the first training step, after the sweeps over the data
    (checks, fingerprint), whose freed chunks would otherwise stay resident for the whole run,
    in every torchrun rank."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        trim = None
    if trim is None:
        return False
    trim(0)
    return True
