"""Rollout in another layout than training, on tiny converted checkpoints; driven by test_reshard.py.

    python tests/rollout/reshard_worker.py --job JOB.json --nproc N --out DIR

JOB.json: {"arch", "train_ckpt" (tools/convert_ckpt.py output at the training layout), "tp", "pp",
"ep" (training layout), "rollout_ckpt" (the same HF model converted directly at the rollout layout),
"rollout_tp", "rollout_ep", "skip_push" (leave out `weights_updated()` after the optimizer step)}.

Per rank, DIR/rank{R}.pt holds:
- weights_equal / weights_max_diff: the rollout shard after the first push vs the direct conversion
  (loaded into a rollout-layout model, in the rollout's parallel state);
- gate_diff: max |rollout log-prob - training forward's| for the sampled sequences (fp32);
- after one optimizer step on the actor: updated_max_diff (rollout shard vs the new actor weights,
  re-sliced for the rollout layout) and changed (the step moved the weights at all);
- outputs, replica, pushes, expert_ids (the routed experts the rollout copy holds, None without
  experts) and num_experts.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def state_of(chunks) -> dict[str, torch.Tensor]:
    out = {}
    for c in chunks:
        while hasattr(c, "module"):
            c = c.module
        for k, v in c.state_dict().items():
            if not k.endswith("_extra_state") and v is not None:
                out[k] = v.detach().clone()
    return out


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))[:4]
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def canonical(chunks, num_experts, vocab) -> dict[str, torch.Tensor]:
    from mindrl.models.sharding import local_shards, merge_shards

    pieces = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(pieces, local_shards(chunks, num_experts))
    return merge_shards([p for g in pieces for p in g], vocab)


def rank_main(job: dict) -> None:
    warnings.filterwarnings("ignore")
    import faulthandler
    faulthandler.dump_traceback_later(int(os.environ.get("MINDRL_HANG_DUMP_S", "400")), exit=True)
    from megatron.core import parallel_state as ps

    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed
    from mindrl.checkpoint.live import load_megatron_checkpoint
    from mindrl.config import GenerateConfig
    from mindrl.models import ParallelLayout, load_hf_config
    from mindrl.models.sharding import load_canonical
    from mindrl.rollout import SamplingParams, build_rollout
    from mindrl.rollout.factory import setup_inference_model
    from mindrl.workers.bringup import PolicySpec, build_policy
    from mindrl.workers.megatron_engine import OptimConfig, forward_backward, next_token_loss_forward
    from tests.rollout.rollout_worker import prompts, trainer_log_probs

    backend = get_backend("cpu")
    hf = load_hf_config(Path(job["train_ckpt"]) / "hf")
    model = build_policy(PolicySpec(hf=hf, layout=ParallelLayout(tp=job["tp"], pp=job["pp"], ep=job["ep"]),
                                    dtype="fp32", seed=1234), backend, optim=OptimConfig(lr=1e-2))
    plan = model.plan
    rank = torch.distributed.get_rank()
    load_megatron_checkpoint(model.unwrapped, job["train_ckpt"])
    gen = GenerateConfig(infer_tensor_parallel_size=job["rollout_tp"], infer_expert_parallel_size=job["rollout_ep"],
                         weight_bucket_mb=0.05)  # several buckets even for a tiny model
    runner = build_rollout(gen, plan=plan, actor_chunks=model.chunks, tokenizer=None,
                           core_attention=backend.core_attention_cls(), seed=1234, use_cpu_initialization=True)
    assert not runner.shared
    rollout_chunks = runner.engine.model if isinstance(runner.engine.model, list) else [runner.engine.model]
    result: dict = {"replica": (runner.replica, runner.num_replicas), "num_experts": plan.args.num_experts,
                    "expert_ids": runner.engine.weight_loader.expert_ids()}

    # 1. First generate pushes; the rollout shard must equal the direct conversion, bit for bit.
    dp = ps.get_data_parallel_rank()
    params = SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=7)
    outputs = runner.generate(prompts(dp), params)
    with runner.state.active():
        ref_chunks = setup_inference_model(runner.engine.rollout_plan, backend.core_attention_cls())
        load_megatron_checkpoint([c for c in ref_chunks], job["rollout_ckpt"])
        result["weights_max_diff"] = max_diff(state_of(rollout_chunks), state_of(ref_chunks))
        result["weights_equal"] = all(torch.equal(a, b) for a, b in zip(state_of(rollout_chunks).values(),
                                                                          state_of(ref_chunks).values()))
    # 2. The rollout's log-probs are the training forward's for the same tokens.
    ref = trainer_log_probs(model, outputs, 1.0, plan.vocab_size)
    result["gate_diff"] = max((torch.tensor(o.logprobs) - r).abs().max().item() for o, r in zip(outputs, ref))
    result["outputs"] = [(o.prompt_index, o.sample_index, o.token_ids, o.logprobs) for o in outputs]

    # 3. One optimizer step on the actor; the next generate must see the new weights.
    before = canonical(model.unwrapped, plan.args.num_experts, plan.vocab_size)
    g = torch.Generator().manual_seed(5 + dp)
    tokens = torch.randint(0, plan.vocab_size, (2, 9), generator=g)
    for chunk in model.chunks:
        chunk.train()
    forward_backward(model, [{"tokens": tokens[:, :-1], "labels": tokens[:, 1:]}], next_token_loss_forward(plan.vocab_size))
    model.optimizer.step()
    after = canonical(model.unwrapped, plan.args.num_experts, plan.vocab_size)
    result["changed"] = any(not torch.equal(before[k], after[k]) for k in after)
    if not job.get("skip_push"):
        runner.weights_updated()
    runner.generate(prompts(dp), params)
    with runner.state.active():
        load_canonical(ref_chunks, after, plan.args.num_experts)
        result["updated_max_diff"] = max_diff(state_of(rollout_chunks), state_of(ref_chunks))
    result["pushes"] = runner.pushes
    torch.save(result, Path(job["out"]) / f"rank{rank}.pt")
    destroy_distributed()


if __name__ == "__main__":
    from tests.tp_worker import spawn_job

    spawn_job(rank_main)
