"""Run a function on N local processes (torchrun semantics: RANK, WORLD_SIZE, MASTER_* set).

One machine only. Several machines go through Ray (mindrl.launch, examples/grpo/*.sh).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch.multiprocessing as mp

# More CPU ranks than this on one box only thrash (each rank is a full megatron process).
MAX_LOCAL_CPU_RANKS = 8


class LaunchError(RuntimeError):
    """The local launcher cannot run this many ranks here; the message says what to use instead."""


def check_local_ranks(nprocs: int, backend: Any) -> None:
    """Refuse to spawn more local ranks than this machine has devices (CPU: cores, at least 8)."""
    hint = ("the spawn launcher runs every rank on this one machine; for several machines run "
            "examples/grpo/grpo_trainer_<recipe>.sh on every node (Ray; docs/multinode.md)")
    if not type(backend).is_available():
        raise LaunchError(f"rl_config.actor_resource.num_npus={nprocs} on backend '{backend.name}', which this "
                          f"machine does not have; {hint}")
    devices = backend.local_device_count()
    if devices is None:  # ranks are processes (cpu)
        limit = max(MAX_LOCAL_CPU_RANKS, os.cpu_count() or 1)
        what = f"{limit} CPU ranks (max of {MAX_LOCAL_CPU_RANKS} and the core count)"
    else:
        limit, what = devices, f"{devices} {backend.name} device(s)"
    if nprocs > limit:
        raise LaunchError(f"rl_config.actor_resource.num_npus={nprocs} ranks but this machine has {what}; {hint}")


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
