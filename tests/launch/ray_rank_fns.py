"""Rank functions and a faulty rank actor for tests/launch/test_ray_failures.py.

Pickled by value (ray.cloudpickle.register_pickle_by_value), so Ray workers need not import tests.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from mindrl.launch.ray_driver import RankActor


def where(cfg: Any) -> None:
    """Write this rank's Ray node id to <output_dir>/node_<rank>."""
    import ray

    out = Path(cfg.megatron_training.output_dir)
    (out / f"node_{os.environ['RANK']}").write_text(ray.get_runtime_context().get_node_id())


def die_in_collective(cfg: Any) -> None:
    """Every rank joins gloo and all-reduces once; then rank `cfg.victim` SIGKILLs itself while the
    others block in the next all-reduce, so they raise "Connection closed by peer" right after.

    With `cfg.pause_raylet_s`, the victim first pauses its own raylet (SIGSTOP, with a detached
    SIGCONT after that many seconds): Ray then reports the death late and the survivors' exceptions
    reach the driver first, as when a node is slow to report a death. Arrival order then names a
    survivor; time of failure names the victim.
    """
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120),
                            init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}")
    t = torch.ones(1)
    dist.all_reduce(t)
    if rank == cfg.victim:
        time.sleep(1.0)  # the others are inside the next all_reduce by now
        raylet = os.getppid()
        cmdline = Path(f"/proc/{raylet}/cmdline").read_bytes().split(b"\0")[0]
        if cfg.pause_raylet_s and cmdline.endswith(b"raylet"):
            subprocess.Popen([sys.executable, "-c", f"import os, signal, time; time.sleep({cfg.pause_raylet_s}); "
                              f"os.kill({raylet}, signal.SIGCONT)"], start_new_session=True)
            os.kill(raylet, signal.SIGSTOP)
        print(f"rank {rank} kills itself at {time.time():.3f}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(t)
    dist.destroy_process_group()


class FaultyRankActor(RankActor):
    """A rank actor whose start-up call `fail` raises on rank `bad`."""

    bad, fail = 1, "info"

    def info(self) -> dict[str, Any]:
        if self.fail == "info" and self.rank == self.bad:
            raise OSError("no device visible here")
        return super().info()

    def free_port(self, ip: str) -> int:
        if self.fail == "free_port":
            raise OSError(f"cannot bind {ip}")
        return super().free_port(ip)
