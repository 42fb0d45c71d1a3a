"""The training forwards with and without `actor_config.use_torch_compile`, same process, alternating.

    python -m benchmarks.train_switches [--prompts 8] [--rounds 2] [--threads N] [--profile N] [--quick]

Work: the issue-21 step's reference forward and update, without the rollout: `grpo_vs_trl`'s model
(Qwen2-shaped hidden 256 x 4 layers, the real 151,936 vocabulary, fp32, random weights), 8 prompts x
8 samples = 64 rows of 141-146 prompt tokens + 64 response tokens (random ids), micro-batches of 8
rows, KL 0.04 to a frozen reference, lr 0 (the weights stay put, so every round does the same work).
Each phase runs `PolicyWorker.log_probs` / `PolicyWorker.update` exactly as the trainer does.

Variants: `eager` (the plain path) and `compile` (the same modules with their transformer layers
compiled, mindrl/models/compile.py). The compiled variant's first call of each phase compiles
(forward and backward graphs): reported apart as the compile time, then `--rounds` alternating
rounds of eager and compiled. Reported per phase: the median wall seconds and process CPU seconds
(all threads; on a loaded machine CPU time is stretched far less than wall time), model FLOPs
(mindrl/models/flops.py), GFLOP/s from the wall time and % of the fp32 2048^2 matmul peak measured
in this process at the same thread count before and after; and the largest log-prob / gradient
difference between the variants. `--threads` (default MINDRL_CPU_THREADS, else 1). `--profile N`:
torch.profiler's top N operators of one eager reference forward and one eager update.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

HF = {"model_type": "qwen2", "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4,
      "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 151936, "rope_theta": 1e6,
      "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 4096}
SAMPLES, RESPONSE, KL = 8, 64, 0.04


def _batch(prompts: int):
    from mindrl.workers.actor import build_sequence_batch

    g = torch.Generator().manual_seed(0)
    vocab = HF["vocab_size"]
    p_lens = [int(n) for n in torch.randint(141, 147, (prompts,), generator=g)]
    rows_p = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in p_lens for _ in range(SAMPLES)]
    rows_r = [torch.randint(0, vocab, (RESPONSE,), generator=g).tolist() for _ in rows_p]
    b = build_sequence_batch(rows_p, rows_r, torch.randn(len(rows_p), generator=g))
    return b, [len(p) for p in rows_p], [RESPONSE] * len(rows_p)


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=int(os.environ.get("MINDRL_CPU_THREADS", "0")) or 1)
    p.add_argument("--profile", type=int, default=0, metavar="N")
    p.add_argument("--quick", action="store_true", help="2 prompts, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.rounds = 2, 1
    warnings.filterwarnings("ignore")
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ["MINDRL_CPU_THREADS"] = str(args.threads)
    from mindrl.backends import get_backend
    from mindrl.backends.peak import measure_matmul_peak
    from mindrl.config.schema import RLConfig
    from mindrl.models.flops import flop_model, training_forward_flops
    from mindrl.workers.actor import PolicyWorker
    from mindrl.workers.bringup import PolicySpec, build_policy, frozen_copy
    from mindrl.workers.megatron_engine import OptimConfig

    backend = get_backend("cpu")
    torch.set_num_threads(args.threads)
    load = [os.getloadavg()[0]]
    peaks = [measure_matmul_peak(torch.float32, repeats=5)]
    actor = build_policy(PolicySpec(hf=HF, dtype="fp32"), backend, optim=OptimConfig(lr=0.0))
    ref_model = frozen_copy(actor, backend)
    kw = {"micro_batch_size": SAMPLES, "temperature": 1.0}
    workers = {"eager": (PolicyWorker(ref_model, **kw), PolicyWorker(actor, **kw)),
               "compile": (PolicyWorker(ref_model, use_torch_compile=True, **kw),
                           PolicyWorker(actor, use_torch_compile=True, **kw))}
    batch, p_lens, r_lens = _batch(args.prompts)
    fwd = training_forward_flops(flop_model(HF), p_lens, r_lens)
    flops = {"reference": fwd, "update": 3 * fwd}
    rl = RLConfig(use_kl_loss=True, kl_coef=KL)
    params = [q for chunk in actor.chunks for q in chunk.parameters()]
    results: dict[str, dict[str, list]] = {v: {"reference": [], "update": []} for v in workers}
    outputs: dict[str, tuple] = {}

    def phase(variant: str) -> dict[str, tuple]:
        ref, act = workers[variant]
        lp, w1, c1 = _timed(lambda: ref.log_probs(batch))
        batch.ref_log_probs = batch.old_log_probs = lp
        m, w2, c2 = _timed(lambda: act.update(batch, rl))
        outputs[variant] = (lp, m, [q.main_grad.clone() for q in params])
        return {"reference": (w1, c1), "update": (w2, c2)}

    phase("eager")  # warm-up (allocator, megatron's first-call set-up)
    compile_s = phase("compile")
    for _ in range(args.rounds):
        for variant in workers:
            for name, t in phase(variant).items():
                results[variant][name].append(t)
    peaks.append(measure_matmul_peak(torch.float32, repeats=5))
    load.append(os.getloadavg()[0])
    peak = max(peaks)
    print(f"{args.prompts} prompts x {SAMPLES} samples, {len(p_lens)} rows of {min(p_lens)}-{max(p_lens)} prompt + "
          f"{RESPONSE} response tokens; {args.threads} thread(s); {args.rounds} alternating round(s); fp32 2048^2 "
          f"matmul peak {peaks[0] / 1e9:.0f} / {peaks[1] / 1e9:.0f} GFLOP/s before / after; "
          f"load average {load[0]:.1f} before, {load[1]:.1f} after\n")
    print("| phase | variant | model TFLOP | wall s (median) | CPU s (median) | GFLOP/s (wall) | % of peak |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in ("reference", "update"):
        for variant in workers:
            w = statistics.median(t[0] for t in results[variant][name])
            c = statistics.median(t[1] for t in results[variant][name])
            print(f"| {name} | {variant} | {flops[name] / 1e12:.3f} | {w:.2f} | {c:.2f} | {flops[name] / w / 1e9:.0f} | "
                  f"{100 * flops[name] / w / peak:.0f}% |")
    print(f"\ncompile (first compiled call, includes one run): reference {compile_s['reference'][0]:.1f} s wall / "
          f"{compile_s['reference'][1]:.1f} s CPU, update {compile_s['update'][0]:.1f} s wall / "
          f"{compile_s['update'][1]:.1f} s CPU")
    (lp_e, m_e, g_e), (lp_c, m_c, g_c) = outputs["eager"], outputs["compile"]
    mask = batch.response_mask
    print(f"eager vs compiled: log-probs max |diff| {(lp_e - lp_c)[mask].abs().max().item():.2e} "
          f"(mean log-prob {lp_e[mask].mean().item():.3f}); gradient max |diff| "
          f"{max((a - b).abs().max().item() for a, b in zip(g_e, g_c)):.2e} (largest gradient "
          f"{max(a.abs().max().item() for a in g_e):.2e}); grad_norm {m_e['actor/grad_norm']:.6f} vs "
          f"{m_c['actor/grad_norm']:.6f}")
    if args.profile:
        ref, act = workers["eager"]
        for name, fn in (("reference forward", lambda: ref.log_probs(batch)), ("update", lambda: act.update(batch, rl))):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                fn()
            print(f"\neager {name}, top {args.profile} operators by self CPU time:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
