"""LoRA against full fine-tuning, one GRPO step each, in the same run (each in a fresh process).

    python -m benchmarks.lora [--layers 24] [--rank 16] [--rows 8] [--prompt 64] [--response 64] [--recompute]
                              [--gen-repeats 3]

Model: Qwen2.5-0.5B's shape (hidden 896, 14 heads / 2 KV heads, FFN 4864, vocab 151,936, tied), random
weights, fp32 on the CPU backend; `--layers` (default 24, the real depth) scales the depth only. One
GRPO step without the rollout: old log-probs, reference log-probs (full FT: a frozen copy of the actor,
as the trainer makes; LoRA: the actor with its adapters disabled), one update. Reported per mode:
- peak RSS of the process (ru_maxrss, from the start: model + reference + optimizer + the step);
- step time (median of `--repeats` steps after one warm-up);
- optimizer-state bytes (Adam moments and any fp32 master copies) and trainable parameters.
LoRA only: built-in engine generation with the adapters unmerged (LoRA's fp32 A/B matmuls beside the
base linears) vs merged in place (W += scaling * B @ A, adapters off, then restored), same prompts
(`--gen-repeats 0` skips it).
Timings on a loaded shared machine are noisy: the load average is printed with the results.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from typing import Iterator

import torch


def hf_config(layers: int) -> dict:
    return {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
            "num_key_value_heads": 2, "num_hidden_layers": layers, "vocab_size": 151936, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "tie_word_embeddings": True, "max_position_embeddings": 32768,
            "hidden_act": "silu", "torch_dtype": "float32", "eos_token_id": 151643}


def optimizer_state_bytes(optimizer) -> int:
    seen, total = set(), 0
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", opt)
        for state in inner.state.values():
            for t in state.values():
                if torch.is_tensor(t) and id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
        for group in getattr(opt, "fp32_from_float16_groups", []) or []:
            total += sum(p.numel() * p.element_size() for p in group)
    return total


def run_mode(args: argparse.Namespace) -> dict:
    warnings.filterwarnings("ignore")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from mindrl.backends import get_backend
    from mindrl.config.schema import MindRLConfig
    from mindrl.models.lora import LoRASpec, adapters_disabled, gather_canonical_adapters, lora_layers, merge_canonical_
    from mindrl.models import ParallelLayout
    from mindrl.workers.actor import PolicyWorker, build_sequence_batch
    from mindrl.workers.bringup import PolicySpec, build_policy, frozen_copy
    from mindrl.workers.megatron_engine import OptimConfig

    backend = get_backend("cpu")
    lora = LoRASpec(rank=args.rank, alpha=2.0 * args.rank) if args.mode == "lora" else None
    model = build_policy(PolicySpec(hf_config(args.layers), ParallelLayout(), dtype="fp32", lora=lora,
                                    recompute=args.recompute, overrides={"init_method_std": 0.02}), backend,
                         optim=OptimConfig(lr=1e-5))
    if lora is not None:
        for _, layer in lora_layers(model.unwrapped):  # non-zero B: the adapters do work in every forward
            for ad in layer.adapters.values():
                torch.nn.init.normal_(ad.lora_B, std=0.01)
        reference = PolicyWorker(model, micro_batch_size=args.rows, adapters=False)
    else:
        reference = PolicyWorker(frozen_copy(model, backend), micro_batch_size=args.rows)
    actor = PolicyWorker(model, micro_batch_size=args.rows)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 151936, (args.rows, args.prompt), generator=g).tolist()
    responses = torch.randint(0, 151936, (args.rows, args.response), generator=g).tolist()
    batch = build_sequence_batch(prompts, responses, torch.randn(args.rows, generator=g))
    rl = MindRLConfig().rl_config

    def step() -> None:
        batch.old_log_probs = actor.log_probs(batch)
        batch.ref_log_probs = reference.log_probs(batch)
        actor.update(batch, rl)

    step()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    trainable = sum(p.numel() for c in model.unwrapped for p in c.parameters() if p.requires_grad)
    out = {"mode": args.mode, "step_s": statistics.median(times), "step_times": times,
           "optimizer_state_bytes": optimizer_state_bytes(model.optimizer), "trainable_params": trainable,
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if lora is not None and args.gen_repeats > 0:
        out.update(generation(model, args))
    return out


def generation(model, args: argparse.Namespace) -> dict:
    """Unmerged adapters vs merge-in-place for the built-in engine (same prompts, same seed)."""
    from mindrl.models.lora import adapters_disabled, gather_canonical_adapters, merge_canonical_
    from mindrl.models.layout import iter_local
    from mindrl.rollout import BuiltinRolloutEngine, SamplingParams

    engine = BuiltinRolloutEngine.from_plan(model.plan, model.chunks, seed=0, max_batch_size=64)
    prompts = torch.randint(0, 151936, (args.rows, args.prompt), generator=torch.Generator().manual_seed(1)).tolist()
    params = SamplingParams(n=1, temperature=1.0, max_tokens=args.gen_tokens, seed=0, ignore_eos=True)

    def timed() -> tuple[float, list]:
        t0 = time.perf_counter()
        outs = engine.generate(prompts, params)
        return time.perf_counter() - t0, [o.token_ids for o in outs]

    adapters, scaling = gather_canonical_adapters(model.unwrapped)
    weights = {spec.global_name: t for _, spec, t in iter_local(model.unwrapped)}

    def merged() -> tuple[float, list, float]:
        saved = {}
        t0 = time.perf_counter()
        for name, t in weights.items():
            before = t.detach().clone()
            if merge_canonical_(name, t.data, adapters, model.plan.hf, scaling):
                saved[name] = before  # unmerging must restore the base exactly: W + BA - BA != W in floating point
        merge_s = time.perf_counter() - t0
        with adapters_disabled(model.unwrapped):
            seconds, tokens = timed()
        for name, before in saved.items():
            weights[name].data.copy_(before)
        return seconds, tokens, merge_s

    engine.generate(prompts[:1], params)  # warm-up
    unmerged_s, merged_s, merge_s = [], [], []
    for _ in range(args.gen_repeats):  # alternated, so a load change hits both alike
        s, tokens_unmerged = timed()
        unmerged_s.append(s)
        s, tokens_merged, m = merged()
        merged_s.append(s)
        merge_s.append(m)
    return {"generate_unmerged_s": statistics.median(unmerged_s), "generate_merged_s": statistics.median(merged_s),
            "merge_s": statistics.median(merge_s), "generate_unmerged_all": unmerged_s, "generate_merged_all": merged_s,
            "generated_tokens": sum(len(t) for t in tokens_unmerged),
            "same_tokens_merged": tokens_merged == tokens_unmerged}


def mode_results(module: str, modes: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """(mode, result) for each mode, each run as `python -m <module> --mode <mode> <this command's arguments>` in a
    fresh process (so each mode's peak RSS is its own), which prints its result as one `RESULT <json>` line."""
    for mode in modes:
        proc = subprocess.run([sys.executable, "-m", module, "--mode", mode, *sys.argv[1:]],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"{mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        yield mode, json.loads(line[len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--response", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--recompute", action="store_true",
                   help="full activation recompute in both modes (megatron_training.recompute, as the 7B LoRA recipe)")
    p.add_argument("--gen-repeats", type=int, default=3, help="0: skip the generation comparison")
    p.add_argument("--mode", choices=["lora", "full"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(run_mode(args)))
        return
    results = dict(mode_results("benchmarks.lora", ("full", "lora")))
    full, lora = results["full"], results["lora"]
    load = os.getloadavg()
    print(json.dumps(results, indent=2))
    print(f"\nQwen2.5-0.5B shape, {args.layers} layers, rank {args.rank}, {args.rows} rows x "
          f"({args.prompt} + {args.response}) tokens{', full recompute' if args.recompute else ''}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"peak RSS       full {full['peak_rss_bytes'] / 2**30:.2f} GiB  lora {lora['peak_rss_bytes'] / 2**30:.2f} GiB "
          f"({lora['peak_rss_bytes'] / full['peak_rss_bytes']:.0%})")
    print(f"step time      full {full['step_s']:.2f} s  lora {lora['step_s']:.2f} s ({lora['step_s'] / full['step_s']:.2f}x)")
    print(f"optimizer      full {full['optimizer_state_bytes'] / 2**20:.1f} MiB  lora "
          f"{lora['optimizer_state_bytes'] / 2**20:.1f} MiB; trainable {full['trainable_params']:,} vs {lora['trainable_params']:,}")
    if "generate_unmerged_s" not in lora:  # --gen-repeats 0
        return
    print(f"generation     unmerged {lora['generate_unmerged_s']:.2f} s  merged-in-place {lora['generate_merged_s']:.2f} s "
          f"(+ merge {lora['merge_s']:.2f} s and restore); same tokens: {lora['same_tokens_merged']}")


if __name__ == "__main__":
    main()
