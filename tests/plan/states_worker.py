"""A real CPU run (gloo, one process per rank): build the actor the trainer's way, take one optimizer
step so Adam's state exists, and write each rank's bytes — counted here from the live tensors,
independently of mindrl.plan — plus its pipeline stage to <out>/rank<N>.json.

    python tests/plan/states_worker.py --job job.json --nproc N --out DIR
job.json: {"config": recipe name, "overrides": [...]}
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.tp_worker import spawn_job  # noqa: E402


def rank_main(job: dict) -> None:
    import torch
    from megatron.core import parallel_state as ps

    from mindrl.backends.cpu import CpuBackend
    from mindrl.config import load_config
    from mindrl.workers.bringup import PolicySpec, build_policy, optim_config
    from mindrl.workers.megatron_engine import forward_backward, next_token_loss_forward

    cfg = load_config(job["config"], job["overrides"])
    model = build_policy(PolicySpec.from_config(cfg), CpuBackend(), optim=optim_config(cfg))
    torch.manual_seed(0)
    vocab = model.plan.vocab_size
    tokens = torch.randint(0, vocab, (2, 9))
    # Two micro-batches of one row: the interleaved (VPP) schedule needs a multiple of PP.
    mbs = [{"tokens": tokens[i:i + 1, :-1], "labels": tokens[i:i + 1, 1:]} for i in range(2)]
    forward_backward(model, mbs, next_token_loss_forward(vocab))
    model.optimizer.step()

    params = {id(p): p for c in model.chunks for p in c.parameters()}
    buffers = [b for c in model.chunks for b in c.buffers + c.expert_parallel_buffers]
    if cfg.megatron_training.use_distributed_optimizer:  # parameters live in DDP's padded param buffers
        weights = sum(b.param_data.nbytes for b in buffers)
    else:
        weights = sum(p.nbytes for p in params.values())
    model_ptrs = {p.data_ptr() for p in params.values()} | {b.param_data.data_ptr() for b in buffers
                                                           if b.param_data is not None}
    main = optimizer = 0
    for wrapped in getattr(model.optimizer, "chained_optimizers", [model.optimizer]):
        inner = wrapped.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                # A main param is its own tensor unless it is (a view into) the model's own storage.
                if p.untyped_storage().data_ptr() not in model_ptrs:
                    main += p.nbytes
        for state in inner.state.values():
            optimizer += sum(v.nbytes for k, v in state.items() if torch.is_tensor(v) and k != "step")
    out = {"rank": int(os.environ.get("RANK", "0")), "stage": ps.get_pipeline_model_parallel_rank(),
           "params": sum(p.numel() for p in params.values()), "weights": weights,
           "grads": sum(b.grad_data.nbytes for b in buffers), "main_params": main, "optimizer": optimizer}
    Path(job["out"], f"rank{out['rank']}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    spawn_job(rank_main)
