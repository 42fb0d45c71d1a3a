"""Build one simulated rank of a job (training layout, or rollout layout) and measure it.

`train_rank(cfg, stage)`: the actor of the first rank of pipeline stage `stage`, built the way the
trainer builds it (`PolicySpec.from_config`, `optim_config`, `setup_model`: the same model, DDP and
megatron optimizer) inside `world.simulated_rank`, its states counted (`states.py`) and one
micro-batch of training and of a forward-only pass measured per chunk (`activations.py`).

`rollout_rank(cfg)`: the rollout's own weights in its own layout (TP x EP, PP 1, its dtype). vLLM
splits experts over its expert-parallel group without TP (expert-TP 1), attention and dense layers
over TP; the built-in engine uses megatron's split (expert-TP = TP). The bytes are megatron's
modules in that split, which is what the built-in copy holds and within a few vocab-padding rows
what vLLM holds.

MoE layers are measured with balanced routing: megatron's drop-and-pad dispatch at capacity factor
1 (static shapes: each expert gets tokens x top-k / experts), since real routing is data-dependent.

May import: torch, megatron-core, mindrl.backends, mindrl.models, mindrl.workers, mindrl.config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mindrl.config import MindRLConfig
from mindrl.models import plan_model
from mindrl.plan.activations import ActivationBytes, stage_activations
from mindrl.plan.states import TrainStates, count_train_states, frozen_weight_bytes, linear_weight_bytes
from mindrl.plan.world import first_rank_of_stage, simulated_rank
from mindrl.workers.bringup import PolicySpec, optim_config
from mindrl.workers.megatron_engine import setup_model

# Planning builds: no initialisation (values never matter), balanced static MoE routing (see docstring).
PLAN_OVERRIDES: dict[str, Any] = {"perform_initialization": False}
MOE_OVERRIDES: dict[str, Any] = {"moe_expert_capacity_factor": 1.0, "moe_pad_expert_input_to_capacity": True,
                                 "moe_token_dispatcher_type": "alltoall"}


def _attention(backend: str) -> type:
    """The core attention whose memory the job's devices would see: on the cpu backend its own
    SDPACoreAttention; on accelerators a flash-style kernel (no score matrix, see attention.py)."""
    from mindrl.backends.attention import SDPACoreAttention

    if backend == "cpu":
        return SDPACoreAttention
    from mindrl.plan.attention import FlashLikeAttention

    return FlashLikeAttention


@dataclass
class TrainRank:
    stage: int
    rank: int
    states: TrainStates
    reference_bytes: int  # the frozen reference copy's parameters (0 without a reference)
    chunk_layers: list[int]  # decoder layers per chunk
    train_act: list[ActivationBytes] = field(default_factory=list)  # per chunk, one micro-batch
    forward_act: list[ActivationBytes] = field(default_factory=list)  # per chunk, forward only
    logprob_chunk: int = 0  # the fused log-prob's chunk temporaries (last stage), included in train_act


def _overrides(hf_num_experts: int | None) -> dict[str, Any]:
    return {**PLAN_OVERRIDES, **(MOE_OVERRIDES if hf_num_experts else {})}


def uses_reference(cfg: MindRLConfig) -> bool:
    """mindrl.trainer.train.setup builds the frozen reference when the KL needs it."""
    return bool(cfg.rl_config.use_kl_loss or cfg.rl_config.kl_coef)


def train_plan(cfg: MindRLConfig, spec: PolicySpec | None = None) -> Any:
    spec = spec or PolicySpec.from_config(cfg)
    return plan_model(spec.hf, spec.layout, dtype=spec.dtype, use_cpu_initialization=True,
                      make_vocab_size_divisible_by=spec.make_vocab_size_divisible_by,
                      mtp_num_layers=spec.mtp_num_layers, recompute=spec.recompute,
                      **_overrides(_num_experts(spec.hf)))


def _num_experts(hf: Any) -> int | None:
    n = hf.get("n_routed_experts") or hf.get("num_experts") or hf.get("num_local_experts")
    return int(n) if n else None


def train_rank(cfg: MindRLConfig, stage: int, *, rows: int = 1, seq: int = 1, response: int = 1,
               activations: bool = True, cache: dict | None = None, rank: int | None = None) -> TrainRank:
    """Build and measure the first rank of pipeline stage `stage` (see the module docstring), or global
    rank `rank` when given (`stage` is then that rank's)."""
    spec = PolicySpec.from_config(cfg)
    plan = train_plan(cfg, spec)
    world = cfg.rl_config.actor_resource.num_npus
    layout = plan.layout
    if rank is None:
        rank = first_rank_of_stage(stage, world, layout.pp)
    with simulated_rank(rank, world, tp=layout.tp, pp=layout.pp, ep=layout.ep,
                        vpp=plan.config.virtual_pipeline_model_parallel_size, seed=spec.seed):
        from megatron.core import parallel_state as ps

        stage = ps.get_pipeline_model_parallel_rank()
        model = setup_model(plan, _attention(cfg.backend), train=True, optim=optim_config(cfg), lora=spec.lora,
                            lora_seed=spec.seed)  # LoRA: a frozen base, the optimizer holds the adapters only
        states = count_train_states(model)
        # The frozen reference copy; under LoRA the reference is the actor with its adapters off: no copy.
        ref = 0 if spec.lora is not None else sum(p.numel() * p.element_size() for p in
                                                  {id(p): p for c in model.chunks for p in c.parameters()}.values())
        gpts = model.unwrapped
        result = TrainRank(stage=stage, rank=rank, states=states, reference_bytes=ref if uses_reference(cfg) else 0,
                           chunk_layers=[len(g.decoder.layers) for g in gpts])
        if activations:
            for i in range(len(model.chunks)):
                kw = dict(rows=rows, seq=seq, response=response, vocab_size=plan.vocab_size,
                          cache=cache if cache is not None else {})
                result.train_act.append(stage_activations(model, i, **kw))
                result.forward_act.append(stage_activations(model, i, forward_only=True, **kw))
            if gpts[-1].post_process:
                result.logprob_chunk = logprob_chunk_bytes(rows, response, plan.padded_vocab_size, layout.tp)
    return result


def logprob_chunk_bytes(rows: int, response: int, padded_vocab: int, tp: int) -> int:
    """The fused log-prob's own temporaries (mindrl/models/logprobs.py): one chunk of at most CHUNK_ELEMENTS
    fp32 logits at a time, with its exponentials and, in the backward, its gradient: 3 chunk-sized fp32
    tensors (arithmetic from the chunk size; the measured activations contain them). The update's fused loss
    (mindrl/models/fused_loss.py) keeps its blocks within 2 of them."""
    from mindrl.models.logprobs import CHUNK_ELEMENTS

    local = padded_vocab // tp
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(local, 1))
    return 3 * 4 * min(rows * response, rows_per_chunk) * local


@dataclass
class RolloutRank:
    num_params: int
    weight_bytes: int
    kv_bytes_per_token: int  # this rank's KV cache per token (all layers), engine's layout
    tp: int
    ep: int
    linear_bytes: int = 0  # the linears' weights (a tied head's included): the packed copy of packed_linear


def rollout_layout(cfg: MindRLConfig) -> tuple[int, int]:
    g, a = cfg.generate_config, cfg.actor_config
    tp = a.tensor_model_parallel_size if g.infer_tensor_parallel_size is None else g.infer_tensor_parallel_size
    ep = a.expert_model_parallel_size if g.infer_expert_parallel_size is None else g.infer_expert_parallel_size
    return int(tp), int(ep)


def rollout_dtype(cfg: MindRLConfig) -> str:
    g = cfg.generate_config
    if g.dtype == "auto":
        return "bf16" if cfg.megatron_training.bf16 else "fp32"
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[g.dtype]


def shares_weights(cfg: MindRLConfig) -> bool:
    """mindrl.rollout.factory.shares_weights, on the config: the built-in engine on the actor's own weights."""
    a, g = cfg.actor_config, cfg.generate_config
    same_layout = rollout_layout(cfg) == (a.tensor_model_parallel_size, a.expert_model_parallel_size)
    train_dtype = "bf16" if cfg.megatron_training.bf16 else "fp32"
    return (g.engine == "builtin" and same_layout and a.pipeline_model_parallel_size == 1
            and not a.num_layers_per_virtual_pipeline_stage and rollout_dtype(cfg) == train_dtype)


def packs_linears(cfg: MindRLConfig) -> bool:
    """The built-in engine runs on packed weights (mindrl.rollout.factory.linear_packer, on the config): asked
    for, or left unset on the cpu backend (the only one with a packed linear: oneDNN)."""
    g = cfg.generate_config
    return g.engine == "builtin" and (g.packed_linear is True or (g.packed_linear is None and cfg.backend == "cpu"))


def kv_bytes_per_token(hf: Any, config: Any, tp: int, engine: str, dtype_bytes: int) -> int:
    """One token's KV cache over all layers on one rank. vLLM: MLA keeps the compressed latent
    (kv_lora_rank + rope dims) on every TP rank; GQA keeps K and V of this rank's KV heads (at least one).
    Built-in (megatron's StaticInferenceContext): K and V after projection, this rank's heads."""
    layers = config.num_layers
    if getattr(config, "kv_lora_rank", None) and hf.get("kv_lora_rank"):
        if engine == "vllm":
            per_layer = int(hf["kv_lora_rank"]) + int(hf.get("qk_rope_head_dim", 0))
        else:
            heads = config.num_attention_heads // tp
            per_layer = heads * (config.qk_head_dim + config.qk_pos_emb_head_dim + config.v_head_dim)
    else:
        kv_heads = max(1, (config.num_query_groups or config.num_attention_heads) // tp)
        per_layer = 2 * kv_heads * config.kv_channels
    return layers * per_layer * dtype_bytes


def rollout_rank(cfg: MindRLConfig) -> RolloutRank:
    """The rollout's own weights on one rank (rank 0; rollout ranks are alike), built in its layout."""
    tp, ep = rollout_layout(cfg)
    spec = PolicySpec.from_config(cfg)
    world = cfg.rl_config.actor_resource.num_npus
    etp = 1 if cfg.generate_config.engine == "vllm" and ep > 1 else None
    from mindrl.models import ParallelLayout

    layout = ParallelLayout(tp=tp, ep=ep, sequence_parallel=False)
    overrides = _overrides(_num_experts(spec.hf))
    if etp is not None:
        overrides["expert_tensor_parallel_size"] = etp
    dtype = rollout_dtype(cfg)
    plan = plan_model(spec.hf, layout, dtype=dtype, use_cpu_initialization=True,
                      make_vocab_size_divisible_by=spec.make_vocab_size_divisible_by,
                      mtp_num_layers=spec.mtp_num_layers, **overrides)
    with simulated_rank(0, world, tp=tp, pp=1, ep=ep, etp=etp, seed=spec.seed):
        model = setup_model(plan, _attention(cfg.backend), train=False)
        num, nbytes = frozen_weight_bytes(model.chunks)
        linear = linear_weight_bytes(model.unwrapped)
    dtype_bytes = torch.tensor([], dtype=plan.config.params_dtype).element_size()
    return RolloutRank(num_params=num, weight_bytes=nbytes, tp=tp, ep=ep, linear_bytes=linear,
                       kv_bytes_per_token=kv_bytes_per_token(spec.hf, plan.config, tp, cfg.generate_config.engine,
                                                             dtype_bytes))
