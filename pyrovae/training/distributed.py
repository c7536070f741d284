"""Data-parallel training under torchrun: the process group, each rank's device, rank 0's work.

``torchrun`` describes the processes in the environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``); :func:`distributed` joins the group (``nccl`` for CUDA, ``gloo`` for the CPU)
and yields this process's device. The loop (:mod:`pyrovae.training.loop`) shards every global minibatch
over the ranks; only rank 0 writes the run folder (:func:`on_rank0`).
"""

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, List, Optional

import torch
import torch.distributed as dist

from pyrovae.devices import resolve_device
from pyrovae.errors import PyrovaeError, RunDirError


@contextlib.contextmanager
def distributed(device_name: str):
    """Join the process group torchrun describes (if any) and yield this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield resolve_device(device_name if world <= 1 else rank_device(device_name))
        return
    device = resolve_device(rank_device(device_name))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def rank_device(device_name: str) -> str:
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if device_name.startswith("cuda") else device_name


def on_rank0(fn: Callable[[], Path], rank: int) -> Path:
    """``fn()`` on rank 0 (the only writer); under torchrun every rank learns its result, or
    that it failed (then each raises, instead of waiting forever in a collective)."""
    if not dist.is_initialized():
        return fn()
    box: List[Any] = [None]
    error: Optional[PyrovaeError] = None
    if rank == 0:
        try:
            box[0] = str(fn())
        except PyrovaeError as e:
            error = e
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0] is None:
        raise RunDirError("rank 0 could not open the run folder; see its message")
    return Path(box[0])


