"""Weight push benchmark: training layout -> rollout layout, seconds per GB, vs a plain copy of the
same bytes in the same run.

    python benchmarks/reshard.py [--nproc 2] [--train-tp 2] [--rollout-tp 1] [--hidden 1024] [--layers 4]
                                 [--bucket-mb 512] [--repeats 3]

Builds a random fp32 Qwen2 (untied, vocab 32K) at the training layout and a built-in rollout copy
at the rollout layout (gloo on CPU), then times, best of `--repeats`:
  push : RolloutRunner.push_weights(): iter_hf_buckets (spec exchange, one flat broadcast per
         sending rank, pieces copied into their slots of the full tensors, in the rollout copy's
         own parameters where it holds them whole) + the built-in copy's load_weights (slice and
         copy the rest);
  copy : the same bytes moved the plain way: per bucket, each rank broadcasts a flat buffer as
         large as its share, and every rank copies the whole bucket into a preallocated buffer.
Target (issue 12): push <= 1.5x the copy's seconds per GB.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def qwen2_config(hidden: int, layers: int) -> dict:
    return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": hidden,
            "intermediate_size": hidden * 11 // 4, "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
            "num_key_value_heads": max(1, hidden // 512), "vocab_size": 32000, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": False, "torch_dtype": "float32"}


def plain_copy(bucket_sizes: list[list[int]], repeats: int) -> float:
    """Best seconds to broadcast each rank's share of every bucket and copy the bucket once."""
    import torch
    import torch.distributed as dist

    best = float("inf")
    me = dist.get_rank()
    bufs = [[torch.ones(n, dtype=torch.uint8) if r == me else torch.empty(n, dtype=torch.uint8) for r, n in
             enumerate(sizes)] for sizes in bucket_sizes]
    dst = [torch.empty(sum(sizes), dtype=torch.uint8) for sizes in bucket_sizes]
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        for sizes, bucket, out in zip(bucket_sizes, bufs, dst):
            offset = 0
            for src, buf in enumerate(bucket):
                if sizes[src]:
                    dist.broadcast(buf, src=src)
                out[offset:offset + sizes[src]].copy_(buf)
                offset += sizes[src]
        dist.barrier()
        best = min(best, time.perf_counter() - t0)
    return best


def rank_main(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist

    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed
    from mindrl.checkpoint import live
    from mindrl.config import GenerateConfig
    from mindrl.models import ParallelLayout
    from mindrl.rollout import build_rollout
    from mindrl.workers.bringup import PolicySpec, build_policy

    torch.set_num_threads(1)
    backend = get_backend("cpu")
    hf = qwen2_config(args.hidden, args.layers)
    model = build_policy(PolicySpec(hf=hf, layout=ParallelLayout(tp=args.train_tp), dtype="fp32", seed=1234),
                         backend, train=False)
    plan = model.plan
    gen = GenerateConfig(infer_tensor_parallel_size=args.rollout_tp, weight_bucket_mb=args.bucket_mb)
    runner = build_rollout(gen, plan=plan, actor_chunks=model.chunks, tokenizer=None,
                           core_attention=backend.core_attention_cls(), seed=1, use_cpu_initialization=True)
    # Record what each rank sends per bucket (the copy baseline moves exactly these bytes).
    sizes: list[list[int]] = []
    original = live._gather_full

    def recording(pieces, world, device, vocab_size, target=None, arena=None):
        metas: list = [None] * world
        dist.all_gather_object(metas, [(d["global_name"], d["tp_rank"] if d["split_dim"] is not None else 0,
                                        t.numel() * t.element_size()) for d, t in pieces])
        seen, per_rank = set(), [0] * world
        for src, m in enumerate(metas):
            for name, tp, n in m:
                if (name, tp) not in seen:
                    seen.add((name, tp))
                    per_rank[src] += n
        sizes.append(per_rank)
        return original(pieces, world, device, vocab_size, target, arena)

    live._gather_full = recording
    runner.push_weights()  # warm-up, and records the sizes
    live._gather_full = original
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        runner.push_weights()
        prof.disable()
        if dist.get_rank() == 0:
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    push = float("inf")
    for _ in range(args.repeats):
        dist.barrier()
        t0 = time.perf_counter()
        runner.push_weights()
        dist.barrier()
        push = min(push, time.perf_counter() - t0)
    gb = runner.last_push["bytes"] / 1e9
    copy = plain_copy(sizes, args.repeats)
    if dist.get_rank() == 0:
        print(f"model {gb:.3f} GB fp32 (hidden {args.hidden}, {args.layers} layers), train TP{args.train_tp} -> "
              f"rollout TP{args.rollout_tp}, {args.nproc} ranks, {len(sizes)} buckets of <= {args.bucket_mb} MB")
        print("| what | seconds | s/GB |")
        print("|---|---|---|")
        print(f"| plain copy of the same bytes | {copy:.3f} | {copy / gb:.3f} |")
        print(f"| push (iter_hf_buckets + load_weights) | {push:.3f} | {push / gb:.3f} |")
        print(f"push / copy = {push / copy:.2f}x (target <= 1.5x)")
    destroy_distributed()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--train-tp", type=int, default=2)
    p.add_argument("--rollout-tp", type=int, default=1)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--bucket-mb", type=float, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="print rank 0's cProfile of one push")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from mindrl.utils.launch import spawn

    spawn(rank_main, args.nproc, args)


if __name__ == "__main__":
    main()
