"""Process groups: torch.distributed with the backend's collective, then megatron's parallel state."""
from __future__ import annotations

import os
import socket
from datetime import timedelta

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


def init_distributed(backend: BackendBase, *, tp: int = 1, pp: int = 1, ep: int = 1, vpp: int | None = None,
                     seed: int = 1234, timeout_s: float | None = None) -> None:
    """Set up this process: bind the device, init the process group, megatron's parallel state, RNG.

    Rank, world size and rendezvous come from the usual torchrun variables (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a lone process needs none of them.
    `timeout_s` bounds every collective (and the rendezvous), so ranks whose peer died raise
    instead of hanging; None reads MINDRL_COLLECTIVE_TIMEOUT_S, which the launchers set from
    `rl_config.launcher.collective_timeout_s` (default 1800 s).
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
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
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
