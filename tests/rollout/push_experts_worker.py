"""The weight push sends each rank only the routed experts its rollout shard holds; driven by
test_push_experts.py.

    python tests/rollout/push_experts_worker.py --job JOB.json --nproc 2 --out DIR

JOB.json: {"hf" (a tiny DeepSeek-V3 config), "tp", "ep" (training layout)}. Each rank builds the
randomly initialised policy and runs `iter_hf_buckets` twice over it, HF names, small buckets: once
with no ownership (every rank gets every tensor: the push as it was) and once with rank r holding
the experts [r * E / world, (r + 1) * E / world) (the rollout EP = world layout). DIR/rank{R}.pt:
"full" / "owned": {HF name: tensor}, "full_stats" / "owned_stats": bytes received / sent,
"owned_ids": the experts it asked for, "buckets": buckets seen with ownership.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def rank_main(job: dict) -> None:
    warnings.filterwarnings("ignore")
    import faulthandler
    faulthandler.dump_traceback_later(int(os.environ.get("MINDRL_HANG_DUMP_S", "400")), exit=True)
    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed
    from mindrl.checkpoint.live import iter_hf_buckets
    from mindrl.models import ParallelLayout
    from mindrl.workers.bringup import PolicySpec, build_policy

    hf = job["hf"]
    model = build_policy(PolicySpec(hf=hf, layout=ParallelLayout(tp=job["tp"], ep=job["ep"]), dtype="fp32", seed=99),
                         get_backend("cpu"), train=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    experts = int(hf["n_routed_experts"])
    owned = list(range(rank * experts // world, (rank + 1) * experts // world))
    result: dict = {"owned_ids": owned}
    for key, ids in (("full", None), ("owned", owned)):
        stats: dict[str, int] = {}
        got, buckets = {}, 0
        for bucket in iter_hf_buckets(model.unwrapped, hf, bucket_bytes=60_000, experts=ids, stats=stats):
            buckets += 1
            for name, t in bucket:
                assert name not in got, f"{name} pushed twice"
                got[name] = t.detach().clone()
        result[key], result[f"{key}_stats"], result[f"{key}_buckets"] = got, stats, buckets
    torch.save(result, Path(job["out"]) / f"rank{rank}.pt")
    destroy_distributed()


if __name__ == "__main__":
    from tests.tp_worker import spawn_job

    spawn_job(rank_main)
