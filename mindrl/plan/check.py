"""validate()'s memory check: refuse a job whose plan does not fit its devices, before any rank starts.

`MemoryCheck(capacity)` is what `mindrl.config.validate(cfg, memory_check=...)` calls when a job's
device memory is known (the backend's device, or `--device` / `--device-gb` of the training CLI).
It runs `python -m mindrl.plan --json` on the config in a process of its own (planning installs
megatron's parallel state and torch's fake process group, which must not leak into the caller, a
future rank) and returns one error line naming the rank, phase, row and numbers of the first phase
that does not fit. `rl_config.skip_memory_check: true` skips it (the escape hatch: the plan is an
estimate where it measures with balanced MoE routing or an attention kernel other than the device's).

May import: mindrl.config, mindrl.plan.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mindrl.config import MindRLConfig
from mindrl.plan.devices import GiB

ROOT = Path(__file__).resolve().parents[2]


class MemoryCheck:
    def __init__(self, capacity: int, device: str | None = None, timeout_s: float = 1800.0) -> None:
        self.capacity, self.device, self.timeout_s = capacity, device, timeout_s

    def __call__(self, cfg: MindRLConfig) -> list[str]:
        if cfg.rl_config.skip_memory_check:
            return []
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "config.json")
            path.write_text(json.dumps(dataclasses.asdict(cfg)))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                env.pop(key, None)  # the planner simulates ranks; it must not join this job's rendezvous
            proc = subprocess.run([sys.executable, "-m", "mindrl.plan", "--config-json", str(path), "--json",
                                   "--device-gb", repr(self.capacity / GiB)], capture_output=True, text=True,
                                  env=env, timeout=self.timeout_s)
        where = self.device or f"{self.capacity / GiB:.2f} GiB devices"
        if proc.returncode not in (0, 3):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            return [f"memory check: the planner failed ({tail[0]}); set rl_config.skip_memory_check=true to start "
                    f"without it"]
        if proc.returncode == 0:
            return []
        plan = json.loads(proc.stdout)
        return [f"memory: the job does not fit {where}: {plan['problem']} (python -m mindrl.plan shows every "
                f"phase; rl_config.skip_memory_check=true starts anyway)"]
