"""Load converted checkpoints into megatron models and record logits (and HF bucket output).

    python tests/checkpoint/logits_worker.py --jobs JOBS.json --nproc N --out DIR

JOBS.json: a list of {"name", "ckpt", "tp", "pp", "ep", "num_layer_list", "vpp_layers"}; all jobs
run in the same N processes one after the other (megatron's parallel state is rebuilt per job, so
the ~20 s of imports are paid once). Per job, rank 0 writes DIR/{name}.pt with the fp32 logits
[batch, seq, vocab], the HF tensors from `iter_hf_buckets`, and per-rank layout-plan mismatches.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
PROMPT_SEED, BATCH, SEQ = 0, 2, 10


def prompt(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(PROMPT_SEED))


def plan_mismatches(chunks: list, plan, m) -> list[str]:
    """Compare the plan computed without processes (plan_ranks) with what the live model says (shard_specs)."""
    from megatron.core import parallel_state as ps

    from mindrl.models.layout import plan_ranks, shard_specs

    mine = [r for r in plan_ranks(m, plan.layout, plan.padded_vocab_size)
            if (r.tp, r.pp, r.ep) == (ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
                                      ps.get_expert_model_parallel_rank())]
    assert len(mine) == 1
    errors = []
    for chunk, live, planned in zip(chunks, shard_specs(chunks, m.num_experts), mine[0].chunks):
        sd = {k: v for k, v in chunk.state_dict().items() if not k.endswith("_extra_state") and v is not None}
        want = {lt.name: (lt.spec, lt.shape) for lt in planned}
        if set(sd) != set(want):
            errors.append(f"names differ: live-only {sorted(set(sd) - set(want))[:4]}, plan-only {sorted(set(want) - set(sd))[:4]}")
            continue
        for name, t in sd.items():
            if (live[name], tuple(t.shape)) != want[name]:
                errors.append(f"{name}: live {live[name]} {tuple(t.shape)} vs plan {want[name]}")
    return errors


def run_job(job: dict) -> None:
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from mindrl.backends import get_backend
    from mindrl.checkpoint.hf_mapping import Mapping
    from mindrl.checkpoint.live import iter_hf_buckets, load_megatron_checkpoint
    from mindrl.models import ParallelLayout, load_hf_config
    from mindrl.workers.bringup import PolicySpec, build_policy
    from mindrl.workers.megatron_engine import forward_backward, gpt_forward

    hf = load_hf_config(Path(job["ckpt"]) / "hf")
    layout = ParallelLayout(tp=job.get("tp", 1), pp=job.get("pp", 1), ep=job.get("ep", 1),
                            num_layer_list=job.get("num_layer_list"),
                            num_layers_per_virtual_pipeline_stage=job.get("vpp_layers"))
    model = build_policy(PolicySpec(hf, layout, dtype="fp32"), get_backend("cpu"), train=False)
    plan = model.plan
    m = Mapping(hf)
    errors = plan_mismatches(model.unwrapped, plan, m)
    load_megatron_checkpoint(model.unwrapped, job["ckpt"])
    tokens = prompt(plan.vocab_size)

    def forward(chunk, batch):
        output = gpt_forward(chunk, batch)

        def loss_fn(logits):
            full = gather_from_tensor_model_parallel_region(logits)[..., :plan.vocab_size]
            return logits.sum() * 0, {"logits": full.detach().clone()}
        return output, loss_fn

    with torch.no_grad():
        # one row per micro-batch: the interleaved (VPP) schedule needs >= PP micro-batches
        reported = forward_backward(model, [{"tokens": row[None]} for row in tokens], forward, forward_only=True)
    buckets = {}
    for bucket in iter_hf_buckets(model.unwrapped, hf, bucket_bytes=64 * 1024):
        buckets.update(bucket)
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, {"logits": torch.cat([r["logits"] for r in reported]) if reported else None,
                                                   "errors": errors})
    if torch.distributed.get_rank() == 0:
        logits = next(g["logits"] for g in gathered if g["logits"] is not None)
        torch.save({"logits": logits, "hf": buckets, "errors": [e for g in gathered for e in g["errors"]]},
                   Path(job["out"]) / f"{job['name']}.pt")
    ps.destroy_model_parallel()
    torch.distributed.barrier()


def rank_main(jobs: list[dict]) -> None:
    warnings.filterwarnings("ignore")
    for job in jobs:
        run_job(job)
    torch.distributed.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", required=True)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    jobs = json.loads(Path(args.jobs).read_text())
    for job in jobs:
        job["out"] = args.out
    if args.nproc == 1:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        rank_main(jobs)
    else:
        from mindrl.utils.launch import spawn

        spawn(rank_main, args.nproc, jobs)


if __name__ == "__main__":
    main()
