"""One evaluation rank: build the model at the plan's layout, load the weights, generate, and on
global rank 0 score, write and print.

Every rank of a model-parallel group (TP x PP x EP) generates the same prompts (SPMD, as in the
trainer); data-parallel groups split each eval set into contiguous slices. Rank 0 gathers the
generations, leaves the process groups, then scores them in the reward sandbox.

Sampling seed: `seed * 1_000_003 + data-parallel rank`, and the built-in engine draws each token
from (seed, prompt position in the call, sample index, step), so the same seed, layout and number
of data-parallel ranks give the same completions, whether the weights came from HF or megatron.
"""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from mindrl.eval.plan import DatasetPlan, EvalPlan


@torch.no_grad()
def load_hf_weights(chunks: list[torch.nn.Module], model_dir: str, hf_cfg: dict[str, Any]) -> None:
    """Convert an HF safetensors directory in memory, one canonical tensor at a time, into this rank's slices."""
    from mindrl.checkpoint.convert import HFSource
    from mindrl.checkpoint.hf_mapping import Mapping
    from mindrl.models.layout import iter_local
    from mindrl.models.sharding import slice_canonical

    m = Mapping(hf_cfg)
    source = HFSource(Path(model_dir), m)
    targets: dict[str, list[tuple[torch.Tensor, Any]]] = {}
    for _, spec, tensor in iter_local(chunks, m.num_experts):  # the base model's tensors (LoRA adapters: not HF's)
        targets.setdefault(spec.global_name, []).append((tensor, spec))
    for canonical, full in source:
        for tensor, spec in targets.pop(canonical, []):
            tensor.copy_(slice_canonical(full, spec, tensor.shape).to(tensor.dtype))
    if targets:
        raise KeyError(f"{model_dir}: no weights for {', '.join(sorted(targets)[:5])}")


def rank_main(plan: EvalPlan) -> None:
    """Entry point on every rank (spawned by `python -m mindrl.evaluate`, or one torchrun process)."""
    warnings.filterwarnings("ignore")
    logging.getLogger("megatron").setLevel(logging.ERROR)
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from transformers import AutoTokenizer

    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed
    from mindrl.checkpoint.live import load_megatron_checkpoint
    from mindrl.models import ParallelLayout
    from mindrl.rollout import BuiltinRolloutEngine
    from mindrl.workers.bringup import PolicySpec, build_policy

    backend = get_backend(plan.backend)
    t0 = time.perf_counter()
    lora, adapters = None, None
    if plan.adapter is not None:
        from mindrl.checkpoint.lora_io import read_adapter

        lora, adapters = read_adapter(plan.adapter, plan.hf_config)
    model = build_policy(PolicySpec(plan.hf_config, ParallelLayout(tp=plan.tp, pp=plan.pp, ep=plan.ep), dtype=plan.dtype,
                                    make_vocab_size_divisible_by=plan.vocab_divisible_by, seed=plan.seed, lora=lora),
                         backend, train=False)
    mplan = model.plan
    rank = dist.get_rank()
    if plan.model_kind == "hf":
        load_hf_weights(model.unwrapped, plan.model, plan.hf_config)
    else:
        load_megatron_checkpoint(model.unwrapped, plan.model)
    if adapters is not None:  # generation runs base + unmerged adapters, as the trainer's rollout does
        from mindrl.models.lora import load_adapters

        load_adapters(model.unwrapped, adapters)
    tokenizer = AutoTokenizer.from_pretrained(plan.tokenizer)
    engine = BuiltinRolloutEngine.from_plan(mplan, model.chunks, tokenizer=tokenizer,
                                            eos_token_id=tokenizer.eos_token_id, seed=plan.seed,
                                            max_batch_size=plan.max_batch_size)
    if rank == 0:
        print(f"[eval] {plan.model_kind} model {plan.model} loaded on {dist.get_world_size()} rank(s) "
              f"(tp={plan.tp} pp={plan.pp} ep={plan.ep}) in {time.perf_counter() - t0:.1f} s", flush=True)
    head = dist.get_process_group_ranks(ps.get_model_parallel_group())[0] == rank
    dp_rank, dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
    generations: dict[str, dict[str, Any]] = {}
    for ds_plan in plan.datasets:
        mine, seconds = _generate(engine, ds_plan, plan, dp_rank, dp_size)
        gathered: list[Any] | None = [None] * dist.get_world_size() if rank == 0 else None
        dist.gather_object((dp_rank, mine) if head else None, gathered, dst=0)
        if rank == 0:
            parts = sorted((g for g in gathered if g is not None), key=lambda g: g[0])
            samples = [s for _, part in parts for s in part]
            generations[ds_plan.label] = {"samples": samples, "seconds": seconds}
            tokens = sum(len(s["token_ids"]) for s in samples)
            print(f"[eval] {ds_plan.label}: {ds_plan.items} prompts x {ds_plan.n} samples, {tokens} tokens in "
                  f"{seconds:.1f} s ({tokens / max(seconds, 1e-9):.0f} tokens/s)", flush=True)
    destroy_distributed()
    if rank == 0:
        from mindrl.eval.report import score_and_write

        score_and_write(plan, generations, tokenizer)


def _generate(engine: Any, ds_plan: DatasetPlan, plan: EvalPlan, dp_rank: int, dp_size: int
              ) -> tuple[list[dict[str, Any]], float]:
    """This data-parallel rank's slice of the eval set: one dict per sample."""
    from mindrl.data import PromptDataset
    from mindrl.rollout import SamplingParams

    dataset = PromptDataset(ds_plan.prefix, shuffle=False)
    per_rank = -(-ds_plan.items // dp_size)
    indices = range(dp_rank * per_rank, min(ds_plan.items, (dp_rank + 1) * per_rank))
    samples = [dataset[i] for i in indices]
    params = SamplingParams(n=ds_plan.n, temperature=plan.temperature, top_p=plan.top_p, top_k=plan.top_k,
                            max_tokens=plan.max_tokens, stop=list(ds_plan.stop),
                            stop_token_ids=list(ds_plan.stop_token_ids), seed=plan.seed * 1_000_003 + dp_rank)
    t0 = time.perf_counter()
    # Called even with no prompts: with EP > 1 every rank must take part in the expert all-to-alls.
    outputs = engine.generate([[int(t) for t in s.prompt_ids] for s in samples], params)
    seconds = time.perf_counter() - t0
    out = []
    for o in outputs:
        s = samples[o.prompt_index]
        out.append({"index": s.index, "row": s.row, "sample": o.sample_index, "prompt_ids": [int(t) for t in s.prompt_ids],
                    "token_ids": list(o.token_ids), "finish_reason": o.finish_reason,
                    "stop_reason": o.stop_reason, "labels": s.labels})
    return out, seconds
