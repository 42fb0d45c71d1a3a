"""Loss and gradients of a tiny model at several layouts vs one rank; used by test_parallel_parity.

    python tests/models/parity_worker.py --arch qwen2 --out DIR --layouts tp2,pp2:1-3,vpp1

First a single-rank reference runs in this process (saving the canonical weights); then two
spawned ranks run every listed layout in turn (megatron's parallel state is rebuilt between
layouts, the process group is kept), each loading the reference weights. Writes DIR/ref.pt and
DIR/<layout>.pt: the loss and the canonical (merged) gradients.

Layout names: tpN, tpNsp (sequence parallel), ppN, ppN:a-b (uneven layers a, b), vppK (PP=2 with
K layers per virtual stage), epN.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("MINDRL_SHARED", REPO.parent / "shared"))
MODEL_DIRS = {"qwen2": "Qwen2.5-0.5B", "llama": "Llama-3.2-1B", "deepseek_v3": "DeepSeek-V3"}
BATCH, SEQ, MICRO_BATCHES, LAYERS = 4, 12, 2, 4


def tiny_hf(arch: str) -> dict:
    from mindrl.models import load_hf_config, scale_down

    return scale_down(load_hf_config(SHARED / "models" / MODEL_DIRS[arch]), num_layers=LAYERS, first_k_dense=1,
                      num_kv_heads=2)


def parse_layout(name: str):
    """'ref', or parts like tp2, pp2, ep2, vpp1, joined (tp2ep2), with 'sp' and ':a-b' (uneven PP)."""
    from mindrl.models import ParallelLayout

    if name == "ref":
        return ParallelLayout()
    m = re.fullmatch(r"((?:(?:tp|pp|ep|vpp)\d+)+)(sp)?(?::(\d+)-(\d+))?", name)
    if not m:
        raise ValueError(f"bad layout name {name!r}")
    sizes = {k: int(v) for k, v in re.findall(r"(tp|pp|ep|vpp)(\d+)", m.group(1))}
    pp = 2 if "vpp" in sizes else sizes.get("pp", 1)
    return ParallelLayout(tp=sizes.get("tp", 1), pp=pp, ep=sizes.get("ep", 1), sequence_parallel=bool(m.group(2)),
                          num_layer_list=[int(m.group(3)), int(m.group(4))] if m.group(3) else None,
                          num_layers_per_virtual_pipeline_stage=sizes.get("vpp"))


def run_layout(arch: str, name: str, out: Path, weights: Path | None) -> None:
    """One layout on the current process group; rank 0 writes out/<name>.pt."""
    from megatron.core import parallel_state as ps

    from mindrl.backends import get_backend
    from mindrl.models.sharding import load_canonical, local_shards, merge_shards
    from mindrl.workers.bringup import PolicySpec, build_policy
    from mindrl.workers.megatron_engine import (OptimConfig, data_parallel_slice, forward_backward,
                                                next_token_loss_forward)

    model = build_policy(PolicySpec(tiny_hf(arch), parse_layout(name), dtype="fp32"), get_backend("cpu"),
                         optim=OptimConfig(lr=1e-3))
    plan = model.plan
    if weights is not None:
        load_canonical(model.unwrapped, torch.load(weights), plan.args.num_experts)
    else:
        torch.save(merge_shards(local_shards(model.unwrapped, plan.args.num_experts), plan.vocab_size),
                   out / "weights.pt")

    g = torch.Generator().manual_seed(0)  # the same global batch on every rank
    tokens = torch.randint(0, plan.vocab_size, (MICRO_BATCHES, BATCH, SEQ + 1), generator=g)
    micro = [{"tokens": data_parallel_slice(t[:, :-1]), "labels": data_parallel_slice(t[:, 1:])} for t in tokens]

    reported = forward_backward(model, micro, next_token_loss_forward(plan.vocab_size))
    pieces = local_shards(model.unwrapped, plan.args.num_experts, what="grad")
    loss = torch.stack([r["loss"] for r in reported]).mean() if reported else None
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, {"pieces": pieces, "loss": loss,
                                                   "dp_rank": ps.get_data_parallel_rank()})
    if torch.distributed.get_rank() == 0:
        losses = {g_["dp_rank"]: g_["loss"] for g_ in gathered if g_["loss"] is not None}
        grads = merge_shards([p for g_ in gathered for p in g_["pieces"]], plan.vocab_size)
        torch.save({"loss": torch.stack(list(losses.values())).mean(), "grads": grads,
                    "sequence_parallel": plan.config.sequence_parallel}, out / f"{name}.pt")
    torch.distributed.barrier()
    ps.destroy_model_parallel()


def ranks_main(arch: str, layouts: list[str], out: str) -> None:
    warnings.filterwarnings("ignore")
    import faulthandler

    faulthandler.dump_traceback_later(int(os.environ.get("MINDRL_HANG_DUMP_S", "480")), exit=True)
    from mindrl.backends.distributed import destroy_distributed

    for name in layouts:
        run_layout(arch, name, Path(out), Path(out) / "weights.pt")
    destroy_distributed()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True, choices=sorted(MODEL_DIRS))
    p.add_argument("--layouts", default="", help="comma-separated layout names (see the module docstring)")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    reference_then_layouts(run_layout, ranks_main, args.arch, args.layouts, Path(args.out), args.nproc)


def reference_then_layouts(run_layout, ranks_main, arch: str, layouts: str, out: Path, nproc: int = 2) -> None:
    """The single-rank reference (`run_layout(arch, "ref", out, None)`) in this process, then the comma-separated
    `layouts` on `nproc` spawned ranks (`ranks_main(arch, layouts, out)`), which compare against it."""
    out.mkdir(parents=True, exist_ok=True)
    from mindrl.backends.distributed import destroy_distributed

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    run_layout(arch, "ref", out, None)
    destroy_distributed()
    names = [x for x in layouts.split(",") if x]
    if names:
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
            os.environ.pop(key, None)
        from mindrl.utils.launch import spawn

        spawn(ranks_main, nproc, arch, names, str(out))

if __name__ == "__main__":
    main()
