"""Process groups: torch.distributed with the backend's collective, then megatron's parallel state.

One timeout (`collective_timeout_s`: `rl_config.launcher.collective_timeout_s`, forwarded to every
rank as MINDRL_COLLECTIVE_TIMEOUT_S) bounds every process group mindrl creates or asks a library to
create: the world group (`init_process_group`), megatron's TP / PP / DP / CP / EP / expert-DP / MP /
embedding groups and their gloo twins (`initialize_model_parallel` here: megatron's
`distributed_timeout_minutes`, plus the one gloo group megatron 0.16.1 forgets), the rollout
layout's second megatron state (`mindrl.rollout.parallel.RolloutParallelState`, the same call) and
vLLM's groups
(`vllm_timeout_kwargs()`: vLLM's own `distributed_timeout_seconds` / `cpu_distributed_timeout_seconds`,
which its `GroupCoordinator` passes to `new_group` for the device and the gloo group).
torch's default for a group created without one is 30 min (gloo) / 10 min (NCCL), whatever the
world group's timeout is: a group only has the timeout it was created with.
"""
from __future__ import annotations

import math
import os
import socket
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from mindrl.backends.base import BackendBase


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


DEFAULT_COLLECTIVE_TIMEOUT_S = 1800.0


def collective_timeout_s(timeout_s: float | None = None) -> float:
    """The collective timeout: the argument, else MINDRL_COLLECTIVE_TIMEOUT_S, else 1800 s."""
    if timeout_s is not None:
        return float(timeout_s)
    value = os.environ.get("MINDRL_COLLECTIVE_TIMEOUT_S", "")
    try:
        return float(value) if value.strip() else DEFAULT_COLLECTIVE_TIMEOUT_S
    except ValueError:
        raise ValueError(f"MINDRL_COLLECTIVE_TIMEOUT_S={value!r}: expected a number of seconds") from None


def initialize_model_parallel(timeout_s: float | None = None, **sizes: Any) -> None:
    """megatron's `initialize_model_parallel(**sizes)` with every group it creates bounded by the
    collective timeout (collective: every rank, same order).

    megatron-core 0.16.1 builds `timedelta(minutes=distributed_timeout_minutes)` and passes it to
    almost every group (its type hint says int; a float gives the exact seconds). It forgets one:
    EXPERT_DATA_PARALLEL_GROUP_GLOO (parallel_state.py, `create_group(ranks, backend="gloo", ...)`
    with no timeout) keeps torch's 30-min default. So afterwards every group megatron recorded in
    `_global_process_group_list` whose timeout differs is set to it (`_set_pg_timeout`: local, no
    collective; torch implements it for gloo and NCCL backends, which is what megatron's gloo twins are)."""
    from megatron.core import parallel_state as ps

    timeout = timedelta(seconds=collective_timeout_s(timeout_s))
    ps.initialize_model_parallel(distributed_timeout_minutes=timeout.total_seconds() / 60.0, **sizes)
    c10d = dist.distributed_c10d
    for group in ps._global_process_group_list or []:
        if isinstance(group, dist.ProcessGroup) and not c10d._rank_not_in_group(group) \
                and group_timeout(group) not in (None, timeout):
            c10d._set_pg_timeout(timeout, group)


def group_timeout(group: Any) -> timedelta | None:
    """The collective timeout a group was created with (its gloo backend's options; None when it
    has no gloo backend, e.g. an NCCL / HCCL group, whose timeout megatron passes at creation)."""
    import torch

    try:
        backend = group._get_backend(torch.device("cpu"))
    except RuntimeError:
        return None
    options = getattr(backend, "options", None)
    return getattr(options, "_timeout", None)


def vllm_timeout_kwargs(timeout_s: float | None = None) -> dict[str, int]:
    """`vllm.LLM` / `EngineArgs` keywords that give vLLM's own process groups the collective timeout
    (vLLM 0.32 `ParallelConfig`: `distributed_timeout_seconds` for the device groups,
    `cpu_distributed_timeout_seconds` for their gloo twins; whole seconds, rounded up). Under
    `external_launcher` the world group is already ours; these cover the TP / PP / DP / EP groups
    vLLM's `initialize_model_parallel` creates."""
    seconds = max(1, math.ceil(collective_timeout_s(timeout_s)))
    return {"distributed_timeout_seconds": seconds, "cpu_distributed_timeout_seconds": seconds}


def init_distributed(backend: BackendBase, *, tp: int = 1, pp: int = 1, ep: int = 1, vpp: int | None = None,
                     seed: int = 1234, timeout_s: float | None = None) -> None:
    """Set up this process: bind the device, init the process group, megatron's parallel state, RNG.

    Rank, world size and rendezvous come from the usual torchrun variables (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a lone process needs none of them.
    `timeout_s` bounds every collective (and the rendezvous) on the world group and on every group
    megatron creates here, so ranks whose peer died raise instead of hanging; None reads
    MINDRL_COLLECTIVE_TIMEOUT_S, which the launchers set from `rl_config.launcher.collective_timeout_s`
    (default 1800 s).
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    backend.setup_process(local_rank)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()) if world_size == 1 else "29500")
        kwargs = {}
        if backend.device_type != "cpu":
            kwargs["device_id"] = backend.device(local_rank)
        dist.init_process_group(backend.dist_backend, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=collective_timeout_s(timeout_s)), **kwargs)
    if not ps.model_parallel_is_initialized():
        initialize_model_parallel(timeout_s, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                  virtual_pipeline_model_parallel_size=vpp, expert_model_parallel_size=ep)
    backend.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def destroy_distributed() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
