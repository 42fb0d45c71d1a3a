"""One model bring-up: plan the model, set up this rank's process groups, build its chunks.

`build_policy(spec, backend)` is the only place that runs `plan_model` (`policy_plan`) ->
`init_distributed` -> `setup_model`; the trainer, the sanity CLI, the warm start, evaluation, the
rollout benchmark and the multi-rank test workers all call it, so they cannot drift apart (before,
the sanity run silently dropped `recompute` and the LR schedule). `PolicySpec.from_config` and `optim_config`
read a `MindRLConfig` in one place for the callers that have one.

Hardware questions (which dtype `auto` means, whether to initialise on the host) are answered by
the backend, not here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from mindrl.backends.base import BackendBase
from mindrl.backends.distributed import init_distributed
from mindrl.models import ModelPlan, ParallelLayout, plan_model
from mindrl.models.lora import LoRASpec
from mindrl.workers.megatron_engine import MegatronModel, OptimConfig, setup_model

if TYPE_CHECKING:
    from mindrl.config import MindRLConfig


@dataclass
class PolicySpec:
    """What to build: everything a bring-up needs besides the backend."""

    hf: Mapping[str, Any]  # the HF config.json fields
    layout: ParallelLayout = field(default_factory=ParallelLayout)
    dtype: str = "auto"  # fp32 | bf16 | fp16 | auto (the backend decides from hf["torch_dtype"])
    make_vocab_size_divisible_by: int = 128
    mtp_num_layers: int = 0
    recompute: bool = False
    seed: int = 1234  # seeds torch and megatron's model-parallel RNG tracker (initial weights)
    # Extra megatron TransformerConfig fields (e.g. init_method_std for a test's random model).
    overrides: dict[str, Any] = field(default_factory=dict)
    lora: LoRASpec | None = None  # adapters on a frozen base (rank 0 or None: full fine-tuning)

    @classmethod
    def from_config(cls, cfg: "MindRLConfig") -> "PolicySpec":
        """The actor as a training config describes it (model, actor layout, megatron_training numerics)."""
        from mindrl.config import actor_layout, resolve_hf_config

        mt, lora = cfg.megatron_training, cfg.actor_config.lora
        if lora.quantize_base:  # validate() refuses it first; never silently train a bf16 base instead
            raise ValueError(f"actor_config.lora.quantize_base={lora.quantize_base!r}: a 4-bit base is not supported")
        spec = LoRASpec(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                        target_modules=list(lora.target_modules), use_rslora=lora.use_rslora)
        return cls(hf=resolve_hf_config(cfg), layout=actor_layout(cfg), dtype="bf16" if mt.bf16 else "fp32",
                   make_vocab_size_divisible_by=cfg.model.make_vocab_size_divisible_by,
                   mtp_num_layers=cfg.model.mtp_num_layers, recompute=mt.recompute, seed=mt.seed,
                   lora=spec if spec.enabled else None)


def optim_config(cfg: "MindRLConfig", updates_per_iteration: int | None = None) -> OptimConfig:
    """The optimizer and LR schedule of `actor_config`. The schedule spans every optimizer update
    of the run: `train_iters` x `updates_per_iteration` (default: GRPO's epochs x mini-batches)."""
    a, mt, rl = cfg.actor_config, cfg.megatron_training, cfg.rl_config
    if updates_per_iteration is None:
        updates_per_iteration = rl.epochs * (mt.global_batch_size // (rl.mini_batch_size or mt.global_batch_size))
    total = mt.train_iters * updates_per_iteration
    return OptimConfig(lr=a.lr, min_lr=a.min_lr, lr_decay_style=a.lr_decay_style,
                       lr_warmup_steps=int(a.lr_warmup_fraction * total), lr_decay_steps=total,
                       weight_decay=a.weight_decay, adam_beta1=a.adam_beta1, adam_beta2=a.adam_beta2,
                       clip_grad=a.clip_grad, use_distributed_optimizer=mt.use_distributed_optimizer)


def policy_plan(spec: PolicySpec, backend: BackendBase) -> ModelPlan:
    """The policy's `ModelPlan` (megatron config and layout; validates the layout before any process
    group exists). A caller that needs it before `build_policy` passes it on instead of planning twice."""
    dtype = backend.model_dtype(spec.dtype, spec.hf.get("torch_dtype"))
    return plan_model(spec.hf, spec.layout, dtype=dtype, use_cpu_initialization=backend.use_cpu_initialization,
                      make_vocab_size_divisible_by=spec.make_vocab_size_divisible_by,
                      mtp_num_layers=spec.mtp_num_layers, recompute=spec.recompute, **spec.overrides)


def build_policy(spec: PolicySpec, backend: BackendBase, *, train: bool = True,
                 optim: OptimConfig | None = None, plan: ModelPlan | None = None, **dist_kwargs: Any) -> MegatronModel:
    """This rank's policy: plan (`policy_plan`, unless the caller already has it), process groups and
    RNG for the layout (kept if already set up), then the chunks — wrapped in megatron DDP with an
    optimizer (`train`), or frozen in eval mode. `dist_kwargs` go to `init_distributed`."""
    plan = plan or policy_plan(spec, backend)
    init_distributed(backend, tp=spec.layout.tp, pp=spec.layout.pp, ep=spec.layout.ep,
                     vpp=plan.config.virtual_pipeline_model_parallel_size, seed=spec.seed, **dist_kwargs)
    return setup_model(plan, backend.core_attention_cls(), train=train, optim=optim, lora=spec.lora,
                       lora_seed=spec.seed, sparse_embedding_grad=backend.sparse_embedding_grad())


def frozen_copy(model: MegatronModel, backend: BackendBase) -> MegatronModel:
    """A frozen model with `model`'s current weights (the reference policy: the initial actor).
    Same plan, same rank: its local tensors are exactly `model`'s, so no gather is needed."""
    copy = setup_model(model.plan, backend.core_attention_cls(), train=False)
    for dst, src in zip(copy.unwrapped, model.unwrapped):
        dst.load_state_dict(src.state_dict())
    return copy


__all__ = ["PolicySpec", "build_policy", "frozen_copy", "optim_config", "policy_plan"]
