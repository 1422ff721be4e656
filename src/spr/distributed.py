"""Data-parallel processes under ``torchrun`` or ``accelerate launch``: joining the process group and leaving
it cleanly.

A process that exits while its process group is still up can abort in the C++ destructors ("terminate called
without an active exception", SIGABRT) after all its work is done, and the launcher then reports a finished job
as failed. Every stage that joins a group leaves it with :func:`teardown` (a barrier, then
``destroy_process_group``) before it returns.
"""

from __future__ import annotations

import os
from datetime import timedelta

from .errors import UserError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def join(device: str | None = None):
    """``(rank, world size, accelerate PartialState)`` under a launcher; ``(0, 1, None)`` otherwise."""
    world = world_size()
    if world <= 1:
        return 0, 1, None
    import torch
    from accelerate import PartialState

    cpu = (device or "").startswith("cpu") or not torch.cuda.is_available()
    # Ranks wait for each other at the end; shares can take hours when the data is uneven.
    state = PartialState(cpu=cpu, timeout=timedelta(hours=24))
    if state.num_processes != world:
        raise UserError(f"WORLD_SIZE is {world} but the process group has {state.num_processes} processes")
    return state.process_index, state.num_processes, state


def teardown() -> None:
    """Wait for every process, then destroy the default process group (no-op without one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
