"""Shared entry points of the test workers.

- `run_at_tp1_then_tp2(run)`: workers that compare TP=1 (in this process) with TP=2 (two spawned gloo
  ranks): `python tests/<...>_worker.py --out DIR` calls `run(tp, out)` for each.
- `tp_worker_results(worker, out, timeout)`: the test side of a `run_at_tp1_then_tp2` worker: runs it,
  fails with its output tails if it fails, returns {"tp1_rank0" / "tp2_rank<r>": what each rank saved}.
- `spawn_job(rank_main)`: workers driven by a JSON job: `python tests/<...>_worker.py --job FILE
  --nproc N --out DIR` spawns N gloo ranks that each call `rank_main(job)` (job["out"] = DIR)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable


def run_at_tp1_then_tp2(run: Callable[[int, Path], None]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    out = Path(p.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    run(1, out)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        os.environ.pop(key, None)
    from mindrl.utils.launch import spawn

    spawn(run, 2, 2, out)


def spawn_job(rank_main: Callable[[dict], None]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--job", required=True)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    job = json.loads(Path(args.job).read_text())
    job["out"] = args.out
    from mindrl.utils.launch import spawn

    spawn(rank_main, args.nproc, job)


def tp_worker_results(worker: Path, out: Path, timeout: int) -> dict[str, Any]:
    import torch

    proc = subprocess.run([sys.executable, str(worker), "--out", str(out)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return {p.stem: torch.load(p) for p in sorted(out.glob("*.pt"))}
