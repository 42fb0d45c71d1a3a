"""One loss + gradient evaluation of a tiny model at a given layout; used by test_parallel_parity.

    python tests/models/parity_worker.py --arch qwen2 --nproc 2 --tp 2 --out DIR [--weights W.pt]

Without --weights (the single-rank reference) it saves the model's canonical weights to
DIR/weights.pt. Every run writes DIR/result.pt: the loss and the canonical (merged) gradients.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("MINDRL_SHARED", REPO.parent / "shared"))
MODEL_DIRS = {"qwen2": "Qwen2.5-0.5B", "llama": "Llama-3.2-1B", "deepseek_v3": "DeepSeek-V3"}
BATCH, SEQ, MICRO_BATCHES = 4, 12, 2


def tiny_hf(arch: str, num_layers: int = 3) -> dict:
    from mindrl.models import load_hf_config, scale_down

    return scale_down(load_hf_config(SHARED / "models" / MODEL_DIRS[arch]), num_layers=num_layers, first_k_dense=1, num_kv_heads=2)


def rank_main(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore")
    import faulthandler
    faulthandler.dump_traceback_later(int(os.environ.get("MINDRL_HANG_DUMP_S", "480")), exit=True)
    from megatron.core import parallel_state as ps

    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed, init_distributed
    from mindrl.models import ParallelLayout, plan_model
    from mindrl.models.logprobs import token_log_probs
    from mindrl.models.sharding import load_canonical, local_shards, merge_shards
    from mindrl.workers.megatron_engine import (OptimConfig, data_parallel_slice, forward_backward, gpt_forward,
                                                setup_model)

    backend = get_backend("cpu")
    layout = ParallelLayout(tp=args.tp, pp=args.pp, ep=args.ep, sequence_parallel=args.sp,
                            num_layer_list=[int(x) for x in args.num_layer_list.split(",")] if args.num_layer_list else None,
                            num_layers_per_virtual_pipeline_stage=args.vpp_layers)
    hf = tiny_hf(args.arch, args.layers)
    plan = plan_model(hf, layout, dtype="fp32")
    init_distributed(backend, tp=args.tp, pp=args.pp, ep=args.ep,
                     vpp=plan.config.virtual_pipeline_model_parallel_size, seed=1234)
    model = setup_model(plan, backend.core_attention_cls(), optim=OptimConfig(lr=1e-3))
    out = Path(args.out)
    if args.weights:
        load_canonical(model.unwrapped, torch.load(args.weights), plan.args.num_experts)
    else:
        assert torch.distributed.get_world_size() == 1, "the reference run is single-rank"
        torch.save(merge_shards(local_shards(model.unwrapped, plan.args.num_experts), plan.vocab_size),
                   out / "weights.pt")

    g = torch.Generator().manual_seed(0)  # the same global batch on every rank
    tokens = torch.randint(0, plan.vocab_size, (MICRO_BATCHES, BATCH, SEQ + 1), generator=g)
    micro = [{"tokens": data_parallel_slice(t[:, :-1]), "labels": data_parallel_slice(t[:, 1:])} for t in tokens]

    def forward(chunk, batch):
        output = gpt_forward(chunk, batch)

        def loss_fn(logits):
            loss = -token_log_probs(logits, batch["labels"], plan.vocab_size).mean()
            return loss, {"loss": loss.detach().clone()}  # megatron scales `loss` in place
        return output, loss_fn

    reported = forward_backward(model, micro, forward)
    pieces = local_shards(model.unwrapped, plan.args.num_experts, what="grad")
    loss = torch.stack([r["loss"] for r in reported]).mean() if reported else None
    world = torch.distributed.get_world_size()
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, {"pieces": pieces, "loss": loss,
                                                   "dp_rank": ps.get_data_parallel_rank()})
    if torch.distributed.get_rank() == 0:
        losses = {}
        for g_ in gathered:
            if g_["loss"] is not None:
                losses[g_["dp_rank"]] = g_["loss"]  # a mean over this DP rank's equal share
        grads = merge_shards([p for g_ in gathered for p in g_["pieces"]], plan.vocab_size)
        torch.save({"loss": torch.stack(list(losses.values())).mean(), "grads": grads,
                    "sequence_parallel": plan.config.sequence_parallel}, out / "result.pt")
    destroy_distributed()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True, choices=sorted(MODEL_DIRS))
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--sp", action="store_true")
    p.add_argument("--num-layer-list", default=None)
    p.add_argument("--vpp-layers", type=int, default=None)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--weights", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    from mindrl.utils.launch import spawn

    if args.nproc == 1:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        rank_main(args)
    else:
        spawn(rank_main, args.nproc, args)


if __name__ == "__main__":
    main()
