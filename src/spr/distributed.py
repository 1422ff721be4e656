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


# Training processes end at the same step: at the final barrier a peer missing this long has gone.
TRAINING_TEARDOWN = timedelta(minutes=2)


def teardown(timeout: timedelta | None = None) -> None:
    """Wait for every process, then destroy the default process group (no-op without one).

    ``timeout`` (training, where every process ends at the same step): on a CPU (gloo) group, a process that has
    not reached the barrier by then is reported and left behind, so that a run whose work is all saved exits
    instead of waiting for a peer that has already gone (seen once in about a dozen two-process CPU runs: rank 0
    waited here after rank 1 had exited; the cause was not found). Without ``timeout`` (generate, whose shares
    can end hours apart) the barrier waits as long as the group allows."""
    import logging

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            if timeout is not None and dist.get_backend() == "gloo":
                dist.monitored_barrier(timeout=timeout)
            else:
                dist.barrier()
        except RuntimeError as e:
            logging.getLogger(__name__).warning("leaving the process group without every process: %s", e)
        finally:
            dist.destroy_process_group()
