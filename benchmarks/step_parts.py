"""The GRPO-step hot spots of issue 10, each against the implementation it replaced, same run.

    python -m benchmarks.step_parts [--rows 64] [--vocab 151936] [--repeats 5] [--part sampler,logprobs,head,micro]

- sampler: `mindrl.rollout.sampling.sample` (one keyed uniform per row, two-level inverse CDF) vs the
  previous per-(row, vocab entry) splitmix64 race (reproduced below as the baseline), temperature 1,
  [rows, vocab] fp32 logits: ms per decode step.
- logprobs: chunked log-probs + entropy with backward (mindrl.models.logprobs) vs megatron's
  `vocab_parallel_cross_entropy` + a full-vocab entropy (the previous code), [tokens, vocab] logits:
  seconds and peak RSS growth above the logits themselves (each variant in a fresh process).
- head: the reference/old log-prob forward and the update's forward + backward of a GRPO-shaped batch
  (8 rows, prompt 150 + response 64 tokens; hidden 256, 4 layers, vocab 151,936, as grpo_vs_trl's
  model) with the output layer fused with the log-probs on response positions only
  (`gpt_forward(hidden_states=True)` + `output_log_probs`) vs megatron's output layer on every position
  then the chunked log-probs (the previous code): seconds and peak RSS growth (fresh process each).
- micro: fixed micro-batches vs `max_tokens_per_micro_batch` on a long-tailed response-length batch
  (tiny Qwen2, hidden 128, vocab 32K): seconds for log_probs + one update, tokens computed; the
  token-budget groups right-padded (length-sorted) and packed without padding (megatron's thd layout).
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

import torch


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def old_hash_race(logits: torch.Tensor, keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """The sampler before issue 10: one splitmix64 uniform per (row, vocab entry), Gumbel-max race."""
    from mindrl.rollout.sampling import _srl, splitmix64

    rows = splitmix64(keys.long() ^ splitmix64(steps.long()))
    tokens = torch.arange(logits.shape[-1], dtype=torch.int64)
    bits = _srl(splitmix64(rows[:, None] ^ splitmix64(tokens)[None, :]), 40)
    u = (bits.float() + 0.5) * (1.0 / (1 << 24))
    return torch.argmax(logits - torch.log(-torch.log(u)), dim=-1)


def bench_sampler(rows: int, vocab: int, repeats: int) -> list[tuple[str, str, str]]:
    from mindrl.rollout.sampling import row_keys, sample

    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0))
    keys = row_keys(0, torch.arange(rows), torch.zeros(rows, dtype=torch.long))
    steps = torch.zeros(rows, dtype=torch.long)
    old = _median_ms(lambda: (old_hash_race(logits, keys, steps), torch.log_softmax(logits, -1)), repeats)
    new = _median_ms(lambda: sample(logits, temperature=1.0, keys=keys, steps=steps), repeats)
    return [(f"sampler, {rows} x {vocab:,} logits, per decode step", f"{old:.1f} ms (hash race)",
             f"{new:.1f} ms = {old / new:.0f}x faster")]


def _logprobs_child(variant: str, tokens: int, vocab: int) -> dict:
    """One variant in this (fresh) process: time and RSS growth above the logits."""
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from mindrl.backends import get_backend
    from mindrl.backends.distributed import init_distributed

    init_distributed(get_backend("cpu"))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, tokens, vocab, generator=g).requires_grad_(True)
    labels = torch.randint(0, vocab, (1, tokens), generator=g)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if variant == "chunked":
        from mindrl.models.logprobs import token_log_probs_and_entropy

        logp, entropy = token_log_probs_and_entropy(logits, labels, vocab, temperature=0.9)
    else:
        from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

        scaled = logits.float() / 0.9
        logp = -vocab_parallel_cross_entropy(scaled.transpose(0, 1).contiguous(), labels.t().contiguous()).t()
        shifted = scaled - scaled.max(-1, keepdim=True).values.detach()
        exp = shifted.exp()
        s = exp.sum(-1)
        entropy = s.log() - (exp * shifted).sum(-1) / s
    (logp.sum() + 0.01 * entropy.sum()).backward()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "extra_gib": (peak - base) / 2**20, "logits_gib": logits.numel() * 4 / 2**30}


def bench_logprobs(tokens: int, vocab: int) -> list[tuple[str, str, str]]:
    res = {}
    for variant in ("full", "chunked"):
        proc = subprocess.run([sys.executable, "-m", "benchmarks.step_parts", "--child", variant, "--tokens", str(tokens),
                               "--vocab", str(vocab)], capture_output=True, text=True, check=True)
        res[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    f, c = res["full"], res["chunked"]
    return [(f"log-probs + entropy + backward, {tokens:,} tokens x {vocab:,} vocab (logits {f['logits_gib']:.2f} GiB)",
             f"{f['seconds']:.2f} s, +{f['extra_gib']:.2f} GiB peak (megatron CE + full entropy)",
             f"{c['seconds']:.2f} s, +{c['extra_gib']:.2f} GiB peak (chunked)")]


def _head_child(variant: str, repeats: int) -> dict:
    """One output-layer variant in this (fresh) process: forward-only and forward+backward times, RSS."""
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from mindrl.backends import get_backend
    from mindrl.models.logprobs import token_log_probs_and_entropy
    from mindrl.workers.bringup import PolicySpec, build_policy
    from mindrl.workers.megatron_engine import OptimConfig, forward_backward, gpt_forward, output_log_probs

    hf = {"model_type": "qwen2", "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4,
          "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 151936, "rope_theta": 1e6,
          "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 4096}
    model = build_policy(PolicySpec(hf=hf, dtype="fp32"), get_backend("cpu"), optim=OptimConfig(lr=0.0))
    g = torch.Generator().manual_seed(0)
    rows, prompt, response = 8, 150, 64
    tokens = torch.randint(0, 151936, (rows, prompt + response), generator=g)
    mask = torch.zeros(rows, prompt + response - 1, dtype=torch.bool)
    mask[:, prompt - 1:] = True
    mb = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "response_mask": mask, "adv": torch.randn(rows, 1)}
    fused = variant == "fused"

    def forward(chunk, batch):
        output = gpt_forward(chunk, batch, hidden_states=fused)

        def loss_fn(output):
            if fused:
                logp, entropy = output_log_probs(chunk, output, batch["labels"], 151936, select=batch["response_mask"])
            else:
                logp, entropy = token_log_probs_and_entropy(output, batch["labels"], 151936)
            loss = -(logp * batch["adv"] * batch["response_mask"]).sum() / batch["response_mask"].sum()
            return loss, {"entropy": entropy.detach().sum()}
        return output, loss_fn

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        forward_s = _median_ms(lambda: forward_backward(model, [mb], forward, forward_only=True), repeats) / 1000
    update_s = _median_ms(lambda: forward_backward(model, [mb], forward), repeats) / 1000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"forward_s": forward_s, "update_s": update_s, "extra_gib": (peak - base) / 2**20}


def bench_head(repeats: int) -> list[tuple[str, str, str]]:
    res = {}
    for variant in ("unfused", "fused"):
        proc = subprocess.run([sys.executable, "-m", "benchmarks.step_parts", "--child", f"head-{variant}",
                               "--repeats", str(repeats)], capture_output=True, text=True, check=True)
        res[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    u, f = res["unfused"], res["fused"]
    what = "8 rows x (150 prompt + 64 response), hidden 256 x 4 layers, vocab 151,936"
    return [(f"log-prob forward (reference / old), {what}", f"{u['forward_s']:.2f} s (logits at every position)",
             f"{f['forward_s']:.2f} s = {u['forward_s'] / f['forward_s']:.2f}x (fused, response positions)"),
            (f"update forward + backward, {what}", f"{u['update_s']:.2f} s, +{u['extra_gib']:.2f} GiB peak RSS",
             f"{f['update_s']:.2f} s = {u['update_s'] / f['update_s']:.2f}x, +{f['extra_gib']:.2f} GiB peak RSS")]


def bench_micro(repeats: int) -> list[tuple[str, str, str]]:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    from mindrl.backends import get_backend
    from mindrl.config.schema import RLConfig
    from mindrl.workers.actor import PolicyWorker, build_sequence_batch
    from mindrl.workers.bringup import PolicySpec, build_policy
    from mindrl.workers.megatron_engine import OptimConfig

    hf = {"model_type": "qwen2", "hidden_size": 128, "intermediate_size": 512, "num_attention_heads": 4,
          "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 32768, "rope_theta": 1e6,
          "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 4096}
    backend = get_backend("cpu")
    model = build_policy(PolicySpec(hf=hf, dtype="fp32"), backend, optim=OptimConfig(lr=0.0))
    g = torch.Generator().manual_seed(0)
    # 32 rows, prompt 64; responses long-tailed: most 16-48 tokens, one in eight 512.
    lens = [512 if i % 8 == 0 else int(torch.randint(16, 48, (1,), generator=g)) for i in range(32)]
    batch = build_sequence_batch([torch.randint(0, 32768, (64,), generator=g).tolist() for _ in lens],
                                 [torch.randint(0, 32768, (n,), generator=g).tolist() for n in lens], torch.randn(32))
    rl = RLConfig(use_kl_loss=False)
    out = []
    times = {}
    variants = (("fixed", {}, True), ("padded", {"max_tokens_per_micro_batch": 4608}, False),
                ("packed", {"max_tokens_per_micro_batch": 4608}, True))
    for name, kw, pack in variants:
        worker = PolicyWorker(model, micro_batch_size=8, **kw)
        worker.pack = worker.pack and pack  # "padded": the right-padded, length-sorted budget groups
        padded = sum(mb["tokens"].numel() for mb in worker._micro_batches(batch))

        def step() -> None:
            batch.old_log_probs = worker.log_probs(batch)
            worker.update(batch, rl)
        times[name] = (_median_ms(step, repeats) / 1000, padded)
    (f_s, f_pad), (b_s, b_pad), (p_s, p_pad) = times.values()
    real = sum(64 + n for n in lens)
    out.append((f"log_probs + update, 32 rows, long-tailed responses ({real:,} real tokens)",
                f"{f_s:.2f} s, {f_pad:,} tokens computed (fixed 8-row micro-batches)",
                f"{b_s:.2f} s = {f_s / b_s:.2f}x, {b_pad:,} tokens computed (max_tokens_per_micro_batch=4608, "
                f"right-padded groups)"))
    out.append(("same, token-budget groups packed without padding vs right-padded",
                f"{b_s:.2f} s, {b_pad:,} tokens computed (right-padded, length-sorted)",
                f"{p_s:.2f} s = {b_s / p_s:.2f}x, {p_pad:,} tokens computed (packed, thd; {f_s / p_s:.2f}x fixed)"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--tokens", type=int, default=4096, help="tokens for the log-prob part")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--part", default="sampler,logprobs,head,micro")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.child:
        result = (_head_child(args.child[len("head-"):], args.repeats) if args.child.startswith("head-")
                  else _logprobs_child(args.child, args.tokens, args.vocab))
        print(json.dumps(result))
        return 0
    rows: list[tuple[str, str, str]] = []
    parts = args.part.split(",")
    if "sampler" in parts:
        rows += bench_sampler(args.rows, args.vocab, args.repeats)
    if "logprobs" in parts:
        rows += bench_logprobs(args.tokens, args.vocab)
    if "head" in parts:
        rows += bench_head(args.repeats)
    if "micro" in parts:
        rows += bench_micro(args.repeats)
    print("| part | before (same run) | after |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    print(f"\nload average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
