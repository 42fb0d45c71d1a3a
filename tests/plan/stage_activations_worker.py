"""Activation memory of one micro-batch through each rank's own model chunk on real CPU runs vs the plan,
for tests/plan/test_plan_stage_activations.py (MoE layers, pipeline stages).

    python tests/plan/stage_activations_worker.py real --job job.json --nproc N --out DIR
    python tests/plan/stage_activations_worker.py plan --job job.json --out DIR
job.json: {"config": recipe, "overrides": [...], "cases": [{"rows": R, "seq": S, "response": N}, ...]}

`real`: N real gloo ranks (one process each) build the actor the trainer's way (build_policy: the
trainer's MoE dispatcher, dropless, with the routing the random weights give) and, per case, run one
micro-batch through the rank's chunk under torch's MemTracker: the first stage on random tokens, a
later stage on a random [s, b, h] input (what it would receive), the last stage with the fused output
layer + log-prob over the last N positions and backward from the loss, other stages backward from a
gradient of their output's shape (what they would receive). Writes <out>/rank<R>.json: {"rank",
"stage", "peaks": [...]}, the peak of tracked memory above what existed before each pass.
`plan`: mindrl.plan.ranks.train_rank per pipeline stage (fake tensors, a few layers measured and
composed, balanced routing): the one-micro-batch training peak, <out>/stage<S>.json.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.plan.activations_worker import dense_embedding_cpu, random_batch  # noqa: E402


def rank_main(job: dict) -> None:
    import torch
    from megatron.core import parallel_state as ps
    from torch.distributed._tools.mem_tracker import MemTracker

    from mindrl.config import load_config
    from mindrl.workers.bringup import PolicySpec, build_policy, optim_config
    from mindrl.workers.megatron_engine import gpt_forward, output_log_probs

    cfg = load_config(job["config"], job["overrides"])
    model = build_policy(PolicySpec.from_config(cfg), dense_embedding_cpu(), optim=optim_config(cfg))
    chunk = model.chunks[0].module  # inside DDP (which only calls it)
    gpt = model.unwrapped[0]
    vocab = model.plan.vocab_size
    torch.manual_seed(1234 + ps.get_pipeline_model_parallel_rank())
    peaks = []
    for case in job["cases"]:
        rows, seq, response = case["rows"], case["seq"], case["response"]
        labels, select, batch = random_batch(vocab, rows, seq, response)
        tracker = MemTracker()
        buffers = [b for c in model.chunks for b in c.buffers + c.expert_parallel_buffers]
        tracker.track_external(*model.unwrapped, *[b.grad_data for b in buffers],
                               *[b.param_data for b in buffers if b.param_data is not None])
        if not gpt.pre_process:
            local = seq // gpt.config.tensor_model_parallel_size if gpt.config.sequence_parallel else seq
            hidden = torch.randn(local, rows, gpt.config.hidden_size, dtype=gpt.config.params_dtype,
                                 requires_grad=True)
            tracker.track_external(hidden)  # received from the previous stage
            gpt.set_input_tensor(hidden)
        dev = torch.device("cpu")
        base = tracker.get_tracker_snapshot()[dev]["Total"]
        with tracker:
            out = gpt_forward(chunk, batch, hidden_states=True)
            if gpt.post_process:
                out = output_log_probs(chunk, out, labels, vocab, select=select)[0].sum()
                out.backward()
            else:
                out.backward(torch.randn_like(out))  # the gradient the next stage sends back
            del out
        peaks.append(tracker.get_tracker_snapshot("peak")[dev]["Total"] - base)
        if not gpt.pre_process:
            gpt.set_input_tensor(None)
            del hidden
        for c in model.chunks:
            c.zero_grad_buffer()
    rank = int(os.environ.get("RANK", "0"))
    Path(job["out"], f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "stage": ps.get_pipeline_model_parallel_rank(), "peaks": peaks}))


def plan(job: dict) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("megatron").setLevel(logging.ERROR)
    from mindrl.config import load_config
    from mindrl.plan.ranks import train_rank

    cfg = load_config(job["config"], job["overrides"])
    for stage in range(cfg.actor_config.pipeline_model_parallel_size):
        peaks = []
        for case in job["cases"]:
            tr = train_rank(cfg, stage, rows=case["rows"], seq=case["seq"], response=case["response"])
            peaks.append(tr.train_act[0].peak)
        Path(job["out"], f"stage{stage}.json").write_text(json.dumps({"stage": stage, "peaks": peaks}))


if __name__ == "__main__":
    mode = sys.argv.pop(1)
    if mode == "real":
        from tests.tp_worker import spawn_job

        spawn_job(rank_main)
    else:
        import argparse

        p = argparse.ArgumentParser()
        p.add_argument("--job", required=True)
        p.add_argument("--out", required=True)
        args = p.parse_args()
        job = json.loads(Path(args.job).read_text())
        job["out"] = args.out
        plan(job)
