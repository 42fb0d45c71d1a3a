"""Every process group mindrl creates or asks megatron / vLLM to create carries the collective timeout;
driven by test_group_timeouts.py.

    python tests/backends/group_timeout_worker.py --job JOB.json --nproc 2 --out DIR   # megatron + rollout
    python tests/backends/group_timeout_worker.py --vllm SECONDS --out DIR             # vLLM's groups, 1 rank

JOB.json: {"timeout_s"}. Each rank writes DIR/rank{R}.json:
- "groups": {group description: its gloo backend's timeout in seconds} for the world group, every
  group megatron's parallel state holds after `init_distributed` (train TP2) and every group of the
  rollout layout's state (`RolloutParallelState`, TP1 x EP2), read from the group's own options;
- rank 0 only, "hang": a collective rank 1 never joins, posted at once on the trainer's TP group and
  the rollout's expert group: seconds until each raised and the error text (rank 1 stays alive and
  silent until rank 0 is done, so the failure is the timeout, not a closed connection).
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def timeout_of(group: Any) -> float:
    return group._get_backend(torch.device("cpu")).options._timeout.total_seconds()


def groups_in(state: dict[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    """(name, ProcessGroup) for every group held in a megatron parallel-state snapshot (globals that
    are groups, or lists / dicts of groups); `_global_process_group_list`'s None is the world group."""
    import torch.distributed as dist

    for key, value in state.items():
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else [("", value)]
        for sub, g in items:
            if g is None and key == "_global_process_group_list":
                g = dist.group.WORLD
            if isinstance(g, dist.ProcessGroup):
                yield f"{prefix}{key}{f'[{sub}]' if sub != '' else ''}", g


def rank_main(job: dict) -> None:
    warnings.filterwarnings("ignore")
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from mindrl.backends import get_backend
    from mindrl.backends.distributed import init_distributed
    from mindrl.rollout.parallel import RolloutLayout, RolloutParallelState, _snapshot

    init_distributed(get_backend("cpu"), tp=2, timeout_s=job["timeout_s"])
    rank = dist.get_rank()
    trainer = _snapshot()
    rollout = RolloutParallelState(RolloutLayout(tp=1, ep=2), timeout_s=job["timeout_s"])
    found = {"world": timeout_of(dist.group.WORLD)}
    found.update({n: timeout_of(g) for n, g in groups_in(trainer, "train:")})
    found.update({n: timeout_of(g) for n, g in groups_in(rollout._rollout, "rollout:")})
    result: dict[str, Any] = {"groups": found}
    store = dist.distributed_c10d._get_default_store()
    if rank == 0:
        with rollout.active():
            expert_group = ps.get_expert_model_parallel_group()
        t0 = time.monotonic()
        works = {"train_tp": dist.all_reduce(torch.ones(4), group=ps.get_tensor_model_parallel_group(), async_op=True),
                 "rollout_ep": dist.all_reduce(torch.ones(4), group=expert_group, async_op=True)}
        hang = {}
        for name, work in works.items():
            try:
                work.wait()
                hang[name] = {"seconds": time.monotonic() - t0, "error": None}
            except Exception as e:  # noqa: BLE001 - the timeout is what we want to see
                hang[name] = {"seconds": time.monotonic() - t0, "error": f"{type(e).__name__}: {e}"[:300]}
        result["hang"] = hang
        store.set("hang_done", "1")
        # Rank 0's process serves the store: exit only once rank 1 has seen "hang_done", or its wait fails.
        store.wait(["rank1_seen"], timedelta(seconds=600))
    else:  # stay connected and silent until rank 0 has seen its collectives time out
        store.wait(["hang_done"], timedelta(seconds=600))
        store.set("rank1_seen", "1")
    (Path(job["out"]) / f"rank{rank}.json").write_text(json.dumps(result))
    os._exit(0)  # the groups hold a half-done collective: no orderly teardown


def vllm_main(seconds: float, out: Path) -> None:
    """vLLM's GroupCoordinator (the class its initialize_model_parallel builds every group with)
    under the config `vllm.LLM(**vllm_timeout_kwargs())` makes: device and gloo groups' timeouts."""
    warnings.filterwarnings("ignore")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    import torch.distributed as dist

    from mindrl.backends.distributed import free_port, vllm_timeout_kwargs

    os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group("gloo", rank=0, world_size=1)
    from vllm.config import ParallelConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import parallel_state as vps
    from vllm.engine.arg_utils import EngineArgs

    kwargs = vllm_timeout_kwargs(seconds)
    # A local directory as the model: EngineArgs resolves a name through the hub (refused offline).
    args = EngineArgs(model=str(out), **kwargs)  # the keywords vllm.LLM forwards to EngineArgs
    config = VllmConfig(parallel_config=ParallelConfig(**{k: getattr(args, k) for k in kwargs}))
    with set_current_vllm_config(config):
        g = vps.init_model_parallel_group([[0]], 0, "gloo", group_name="tp", use_device_communicator=False)
    result = {"kwargs": kwargs, "device_group": timeout_of(g.device_group), "cpu_group": timeout_of(g.cpu_group)}
    (out / "vllm.json").write_text(json.dumps(result))
    os._exit(0)


if __name__ == "__main__":
    if "--vllm" in sys.argv:
        import argparse

        p = argparse.ArgumentParser()
        p.add_argument("--vllm", type=float, required=True)
        p.add_argument("--out", required=True)
        a = p.parse_args()
        vllm_main(a.vllm, Path(a.out))
    else:
        from tests.tp_worker import spawn_job

        spawn_job(rank_main)
