"""Run a function on N local processes (torchrun semantics: RANK, WORLD_SIZE, MASTER_* set)."""
from __future__ import annotations

import os
from typing import Any, Callable

import torch.multiprocessing as mp


def _entry(local_rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    fn(*args)


def spawn(fn: Callable[..., Any], nprocs: int, *args: Any) -> None:
    """Call `fn(*args)` in `nprocs` fresh processes and wait; a failing rank raises here.

    Processes are spawned (not forked) so each gets a clean interpreter: the cpu backend's
    megatron adaptations are process-wide.
    """
    from mindrl.backends.distributed import free_port

    mp.start_processes(_entry, args=(fn, nprocs, free_port(), args), nprocs=nprocs, join=True,
                       start_method="spawn")
