"""`build_rollout`: the trainer's one call that turns `generate_config` into a `RolloutRunner`.

- `engine` picks the class from `ROLLOUT_ENGINES` (validate() has already refused one that cannot
  run here).
- The rollout layout is `infer_tensor_parallel_size` x `infer_expert_parallel_size` (None: the
  training TP / EP), PP = 1. With the built-in engine, a layout equal to the training layout
  (same TP and EP, training PP = 1, no virtual stages) and `dtype` equal to the training dtype
  shares the actor's live weights; anything else builds a rollout copy and pushes weights into it.
- `packed_linear` (built-in engine): the backend's `linear_packer` for the rollout dtype goes to the engine,
  which packs every linear weight once per `generate` call (None, the default: wherever the backend has one;
  true: refused where it has none; false: never).
- `fused_sampler` (built-in engine): the LM head fused with the sampler where it applies (TP=1, temperature
  sampling without filters; mindrl/rollout/fused_head.py).
- `max_num_seqs` bounds the rows of a batch; `max_model_len` bounds prompt + max_tokens (checked by
  validate(), and passed to vLLM); `gpu_memory_utilization` goes to vLLM (`build_vllm`); `weight_bucket_mb` sizes
  the push buckets; `offload_train_state` is honoured by the caller passing `train_state`.

Collective (every rank calls it, in step). May import: torch, megatron-core, mindrl.models,
mindrl.checkpoint, mindrl.rollout.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist

from mindrl.rollout.parallel import RolloutLayout, RolloutParallelState
from mindrl.rollout.runner import RolloutRunner

DTYPE_NAMES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
               "float32": torch.float32, "fp32": torch.float32}


def rollout_layout(gen_cfg: Any, train_tp: int, train_ep: int) -> RolloutLayout:
    tp = gen_cfg.infer_tensor_parallel_size
    ep = gen_cfg.infer_expert_parallel_size
    return RolloutLayout(tp=train_tp if tp is None else int(tp), ep=train_ep if ep is None else int(ep))


def rollout_dtype(gen_cfg: Any, train_dtype: torch.dtype) -> torch.dtype:
    return train_dtype if gen_cfg.dtype == "auto" else DTYPE_NAMES[gen_cfg.dtype]


def shares_weights(gen_cfg: Any, plan: Any) -> bool:
    """True when the built-in engine can generate from the actor's parameters as they are."""
    layout = rollout_layout(gen_cfg, plan.layout.tp, plan.layout.ep)
    cfg = plan.config
    return (gen_cfg.engine == "builtin" and (layout.tp, layout.ep) == (plan.layout.tp, plan.layout.ep)
            and plan.layout.pp == 1 and not cfg.virtual_pipeline_model_parallel_size
            and rollout_dtype(gen_cfg, cfg.params_dtype) == cfg.params_dtype)


def build_rollout(gen_cfg: Any, *, plan: Any, actor_chunks: Sequence[torch.nn.Module], tokenizer: Any,
                  core_attention: type, seed: int, use_cpu_initialization: bool = False,
                  make_vocab_size_divisible_by: int = 128, tokenizer_path: str | None = None,
                  train_state: Any = None, engine: Any = None, backend: Any = None,
                  lora_adapter: Any = None) -> RolloutRunner:
    """The rollout for this rank (see the module docstring). `train_state`: what to offload to host
    memory while a rollout with its own weights is awake (`generate_config.offload_train_state`).
    `engine`: a vLLM engine already built by `build_vllm` (the trainer builds it before the training
    state, so vLLM's start-up memory check sees the device free); None builds it here. `backend`: the
    `mindrl.backends` backend, asked for its packed linear unless `generate_config.packed_linear` is false.
    `lora_adapter`: the actor's LoRASpec when its adapters are pushed as a vLLM LoRA each step
    (actor_config.lora.merge=false, engine=vllm only); None: pushes carry merged weights."""
    from mindrl.models.lora import has_lora
    from mindrl.rollout import ROLLOUT_ENGINES

    if lora_adapter is not None:
        if gen_cfg.engine != "vllm":
            raise ValueError(f"actor_config.lora.merge=false (adapter pushes) needs generate_config.engine=vllm, "
                             f"not {gen_cfg.engine}")
        if not has_lora(_unwrapped(actor_chunks)):
            raise ValueError("build_rollout(lora_adapter=...): the actor has no LoRA adapters")
        if engine is not None and getattr(engine, "lora_spec", None) != lora_adapter:
            raise ValueError("build_rollout(lora_adapter=...): the prebuilt vLLM engine was built for "
                             f"{getattr(engine, 'lora_spec', None)}, not this adapter (build_vllm(lora_adapter=))")

    if gen_cfg.engine not in ROLLOUT_ENGINES:
        raise ValueError(f"generate_config.engine: unknown engine '{gen_cfg.engine}'; "
                         f"expected one of {', '.join(ROLLOUT_ENGINES)}")
    eos = getattr(tokenizer, "eos_token_id", None)
    eos = plan.hf.get("eos_token_id") if eos is None else eos
    bucket = int(gen_cfg.weight_bucket_mb * 1024**2)
    packer = linear_packer(gen_cfg, backend, rollout_dtype(gen_cfg, plan.config.params_dtype))
    if shares_weights(gen_cfg, plan):
        if train_state is not None:
            raise ValueError("generate_config.offload_train_state: the built-in engine shares the actor's weights "
                             "here (same layout and dtype); there is no rollout phase to offload around")
        engine = ROLLOUT_ENGINES["builtin"].from_plan(plan, list(actor_chunks), tokenizer=tokenizer, eos_token_id=eos,
                                                      seed=seed, max_batch_size=gen_cfg.max_num_seqs,
                                                      linear_packer=packer, fused_sampler=gen_cfg.fused_sampler)
        return RolloutRunner(engine, shared=True, seed=seed)
    layout = rollout_layout(gen_cfg, plan.layout.tp, plan.layout.ep)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    common = dict(shared=False, source_chunks=_unwrapped(actor_chunks), hf_cfg=plan.hf, bucket_bytes=bucket, seed=seed,
                  train_state=train_state)
    if gen_cfg.engine == "builtin":
        state = RolloutParallelState(layout)
        engine = build_builtin_copy(plan.hf, layout, state, core_attention=core_attention, tokenizer=tokenizer,
                                    eos_token_id=eos, seed=seed, max_batch_size=gen_cfg.max_num_seqs,
                                    dtype=rollout_dtype(gen_cfg, plan.config.params_dtype),
                                    use_cpu_initialization=use_cpu_initialization,
                                    make_vocab_size_divisible_by=make_vocab_size_divisible_by,
                                    linear_packer=packer, fused_sampler=gen_cfg.fused_sampler)
        return RolloutRunner(engine, state=state, replica=state.replica(), replica_leader=state.tp_rank() == 0,
                             **common)
    replica = rank // layout.tp  # vLLM's external launcher: consecutive ranks form one TP instance
    if engine is None:
        engine = build_vllm(gen_cfg, plan.hf, plan.config.params_dtype, seed=seed, tokenizer_path=tokenizer_path,
                            train_tp=plan.layout.tp, train_ep=plan.layout.ep, lora_adapter=lora_adapter)
    return RolloutRunner(engine, replica=(replica, layout.replicas(world)), replica_leader=rank % layout.tp == 0,
                         **common)


def linear_packer(gen_cfg: Any, backend: Any, dtype: torch.dtype) -> Any:
    """The backend's packed linear for `dtype` for the built-in engine, else None: with
    `generate_config.packed_linear` None (default) wherever the backend has one, with true required (validate()
    refuses it first where the backend has none), with false never."""
    if gen_cfg.packed_linear is False or gen_cfg.engine != "builtin":
        return None
    packer = None if backend is None else backend.linear_packer(dtype)
    if packer is None and gen_cfg.packed_linear is True:
        raise ValueError(f"generate_config.packed_linear=true: the {getattr(backend, 'name', 'unknown')} backend has "
                         f"no packed linear for {dtype} here; set generate_config.packed_linear=false")
    return packer


def build_vllm(gen_cfg: Any, hf: dict[str, Any], train_dtype: torch.dtype, *, seed: int, train_tp: int,
               train_ep: int, tokenizer_path: str | None = None, lora_adapter: Any = None) -> Any:
    """This rank's vLLM engine (engine=vllm), asleep where the platform can sleep; built for LoRA adapter
    pushes when `lora_adapter` (the actor's LoRASpec, actor_config.lora.merge=false). Collective under a
    torch.distributed world of several ranks (vLLM's external launcher); needs no megatron state, so the
    trainer calls it before building the actor (vLLM >= 0.10 refuses to start when less than
    `gpu_memory_utilization` x the device's memory is free)."""
    from mindrl.rollout import ROLLOUT_ENGINES

    layout = rollout_layout(gen_cfg, train_tp, train_ep)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return ROLLOUT_ENGINES[gen_cfg.engine].from_generate_config(gen_cfg, hf_cfg=dict(hf), layout=layout,
                                                                replica=rank // layout.tp, seed=seed,
                                                                dtype=rollout_dtype(gen_cfg, train_dtype),
                                                                tokenizer_path=tokenizer_path, lora=lora_adapter)


def build_builtin_copy(hf: dict[str, Any], layout: RolloutLayout, state: RolloutParallelState, *,
                       core_attention: type, dtype: torch.dtype, use_cpu_initialization: bool = False,
                       make_vocab_size_divisible_by: int = 128, **engine_kwargs: Any) -> Any:
    """A built-in engine over its own model in the rollout layout, loading pushed HF tensors."""
    from mindrl.checkpoint.live import HFShardLoader
    from mindrl.models import ParallelLayout, plan_model
    from mindrl.rollout.builtin import BuiltinRolloutEngine

    with state.active(), torch.random.fork_rng(devices=[]):  # the copy's random init must not move the RNG
        plan = plan_model(hf, ParallelLayout(tp=layout.tp, pp=1, ep=layout.ep), dtype=dtype,
                          use_cpu_initialization=use_cpu_initialization,
                          make_vocab_size_divisible_by=make_vocab_size_divisible_by)
        chunks = setup_inference_model(plan, core_attention)
        loader = HFShardLoader([_unwrap(c) for c in chunks], hf)
        engine = BuiltinRolloutEngine.from_plan(plan, chunks, weight_loader=loader, **engine_kwargs)
    engine.rollout_plan = plan  # the rollout copy's own plan (tests build a reference model from it)
    engine.loads_canonical = True  # a megatron model: take the mapping's canonical tensors, skip the HF split
    return engine


def setup_inference_model(plan: Any, core_attention: type) -> list[torch.nn.Module]:
    """This rank's chunks for generation only: frozen, eval, half-precision wrapped like the actor's."""
    from megatron.core.transformer.module import Float16Module

    from mindrl.models import build_model

    chunks: list[torch.nn.Module] = build_model(plan, core_attention)
    if plan.config.bf16 or plan.config.fp16:
        chunks = [Float16Module(plan.config, c) for c in chunks]
    for c in chunks:
        c.eval()
        c.requires_grad_(False)
    return chunks


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    while hasattr(module, "module"):
        module = module.module
    return module


def _unwrapped(chunks: Sequence[torch.nn.Module]) -> list[torch.nn.Module]:
    return [_unwrap(c) for c in chunks]


__all__ = ["build_builtin_copy", "build_rollout", "linear_packer", "rollout_layout", "setup_inference_model", "shares_weights"]
