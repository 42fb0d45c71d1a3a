"""Activation memory of real CPU runs vs the plan, for tests/plan/test_plan_activations.py.

    python tests/plan/activations_worker.py real|plan --cases cases.json --out result.json

cases.json: [{"overrides": [...], "rows": R, "seq": S, "response": N}, ...] (one model for all).
`real`: one real gloo rank builds the actor (build_policy) and, per case, runs the trainer's forward
(gpt_forward + the fused output layer / log-prob over the last N positions of each row) and backward
on random tokens under torch's MemTracker: the peak of tracked memory above what existed before.
`plan`: mindrl.plan.phases.plan_job per case: the training phase's activations row.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def dense_embedding_cpu():
    """The CPU backend with megatron's dense word-embedding gradient, as the planner counts it (and as CUDA / NPU
    run it): torch's MemTracker cannot read the storage of the CPU backend's sparse one (smaller anyway)."""
    from mindrl.backends.cpu import CpuBackend

    class DenseEmbeddingCpu(CpuBackend):
        def sparse_embedding_grad(self) -> bool:
            return False
    return DenseEmbeddingCpu()


def random_batch(vocab: int, rows: int, seq: int, response: int) -> tuple:
    """Random tokens and labels of `rows` x `seq`, the last `response` positions of each row selected for the
    log-probs: (labels, select, the forward's batch)."""
    import torch

    tokens, labels = torch.randint(0, vocab, (rows, seq)), torch.randint(0, vocab, (rows, seq))
    select = torch.zeros(rows, seq, dtype=torch.bool)
    select[:, seq - response:] = True
    return labels, select, {"tokens": tokens, "position_ids": torch.arange(seq)[None].expand(rows, seq)}


def real(cases: list[dict]) -> list[int]:
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    from mindrl.config import load_config
    from mindrl.workers.bringup import PolicySpec, build_policy, optim_config
    from mindrl.workers.megatron_engine import gpt_forward, output_log_probs

    cfg = load_config("grpo_tiny_cpu", cases[0]["overrides"])
    model = build_policy(PolicySpec.from_config(cfg), dense_embedding_cpu(), optim=optim_config(cfg))
    chunk = model.chunks[0].module  # inside DDP (which only calls it)
    vocab = model.plan.vocab_size
    peaks = []
    for case in cases:
        rows, seq, response = case["rows"], case["seq"], case["response"]
        labels, select, batch = random_batch(vocab, rows, seq, response)
        tracker = MemTracker()
        tracker.track_external(*model.unwrapped, *[b.grad_data for c in model.chunks for b in c.buffers])
        dev = torch.device("cpu")
        base = tracker.get_tracker_snapshot()[dev]["Total"]
        with tracker:
            out = gpt_forward(chunk, batch, hidden_states=True)
            loss = output_log_probs(chunk, out, labels, vocab, select=select)[0].sum()
            loss.backward()
            del loss, out
        peaks.append(tracker.get_tracker_snapshot("peak")[dev]["Total"] - base)
    return peaks


def plan(cases: list[dict]) -> list[int]:
    from mindrl.config import load_config
    from mindrl.plan.phases import plan_job

    out = []
    for case in cases:
        job = plan_job(load_config("grpo_tiny_cpu", case["overrides"]))
        (training,) = [p for p in job.ranks[0].phases if p.name == "training"]
        out.append(next(r.bytes for r in training.rows if r.name.startswith("activations")))
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("real", "plan"))
    p.add_argument("--cases", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cases = json.loads(Path(args.cases).read_text())
    Path(args.out).write_text(json.dumps((real if args.mode == "real" else plan)(cases)))
