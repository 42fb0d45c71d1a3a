"""Where a built-in-engine decode step spends its time, with the current sampler and with the
previous per-vocab-entry hash race patched in (torch.profiler, CPU; top operators by self time).

    python -m benchmarks.profile_rollout [--rows 64] [--new 8] [--vocab 151936]

Model: the grpo_vs_trl shape (hidden 256, 4 layers, 4 heads / 2 KV heads, tied), random weights.
"""
from __future__ import annotations

import argparse
import os
import time
import warnings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=8)
    p.add_argument("--vocab", type=int, default=151936)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch

    import mindrl.rollout.builtin as builtin
    from benchmarks.step_parts import old_hash_race
    from mindrl.backends import get_backend
    from mindrl.rollout import BuiltinRolloutEngine, SamplingParams
    from mindrl.rollout.sampling import sample
    from mindrl.workers.bringup import PolicySpec, build_policy

    hf = {"model_type": "qwen2", "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4,
          "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": args.vocab, "rope_theta": 1e6,
          "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 4096}
    backend = get_backend("cpu")
    model = build_policy(PolicySpec(hf=hf, overrides={"init_method_std": 0.02}), backend, train=False)
    plan = model.plan
    prompts = torch.randint(0, args.vocab, (args.rows // 8, args.prompt), generator=torch.Generator().manual_seed(0))
    engine = BuiltinRolloutEngine.from_plan(plan, model.chunks, eos_token_id=[])
    params = SamplingParams(n=8, temperature=1.0, max_tokens=args.new, ignore_eos=True, seed=1)

    def old_sample(logits, *, temperature, keys, steps, **_):  # the sampler before issue 10
        logits = logits.float()
        tokens = old_hash_race(logits / temperature, keys, steps)
        return tokens, torch.log_softmax(logits / temperature, -1).gather(-1, tokens[:, None])[:, 0]

    for name, fn in (("previous hash race", old_sample), ("inverse CDF (now)", sample)):
        builtin.sample = fn
        engine.generate(prompts.tolist(), SamplingParams(n=8, temperature=1.0, max_tokens=2, ignore_eos=True, seed=1))
        t0 = time.perf_counter()
        with torch.profiler.profile() as prof:
            engine.generate(prompts.tolist(), params)
        seconds = time.perf_counter() - t0
        print(f"\n### {name}: {seconds:.2f} s for {args.rows} rows x {args.new} new tokens "
              f"({args.rows * args.new / seconds:,.0f} tok/s, profiler on)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    builtin.sample = sample
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
