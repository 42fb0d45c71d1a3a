"""Build megatron-core `GPTModel`s from an HF config for the current rank's slice of a layout."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import MLATransformerConfig, TransformerConfig

from mindrl.models.args import MegatronArgs
from mindrl.models.layout import ParallelLayout
from mindrl.models.registry import architecture_for
from mindrl.models.spec import decoder_block_spec

log = logging.getLogger(__name__)


def _warn_once(msg: str, *args: object) -> None:
    """Every rank plans the same model: only the first says so."""
    import os

    if os.environ.get("RANK", "0") == "0":
        log.warning(msg, *args)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Megatron's rule: round the vocab up so each TP rank holds an equal, aligned slice."""
    multiple = max(1, divisible_by) * tp
    return -(-vocab_size // multiple) * multiple


@dataclass
class ModelPlan:
    """Everything decided about a model before any rank builds it."""

    hf: dict[str, Any]
    args: MegatronArgs
    config: TransformerConfig
    layout: ParallelLayout
    padded_vocab_size: int

    @property
    def vocab_size(self) -> int:
        return self.args.vocab_size


def megatron_args(hf: Mapping[str, Any], mtp_num_layers: int = 0) -> MegatronArgs:
    return architecture_for(hf).to_megatron(hf, mtp_num_layers=mtp_num_layers)


def plan_model(hf: Mapping[str, Any], layout: ParallelLayout, *, dtype: str | torch.dtype = "fp32",
               use_cpu_initialization: bool = True, make_vocab_size_divisible_by: int = 128,
               mtp_num_layers: int = 0, recompute: bool = False, **overrides: Any) -> ModelPlan:
    """Map the HF config and layout to a megatron `TransformerConfig` (no process groups needed)."""
    args = megatron_args(hf, mtp_num_layers)
    errors = layout.check(num_layers=args.config["num_layers"], num_heads=args.config["num_attention_heads"],
                          num_kv_heads=args.config.get("num_query_groups") or args.config["num_attention_heads"],
                          num_experts=args.num_experts)
    if errors:
        raise ValueError("invalid parallel layout: " + "; ".join(errors))
    sequence_parallel = layout.sequence_parallel and layout.tp > 1
    if args.num_experts and layout.tp > 1 and not sequence_parallel:
        # megatron refuses MoE + TP without SP (its expert-TP path scatters along the sequence).
        _warn_once("MoE with tensor_model_parallel_size=%d: turning on sequence_parallel "
                    "(megatron-core requires it)", layout.tp)
        sequence_parallel = True
    if args.mla and layout.tp > 1 and not sequence_parallel:
        _warn_once("multi-latent attention with tensor_model_parallel_size=%d: turning on sequence_parallel "
                    "(its TP-duplicated KV down-projection needs it)", layout.tp)
        sequence_parallel = True
    layout.sequence_parallel = sequence_parallel
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    kwargs = dict(args.config)
    kwargs.update(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        expert_model_parallel_size=layout.ep,
        sequence_parallel=sequence_parallel,
        params_dtype=torch_dtype,
        pipeline_dtype=torch_dtype,
        bf16=torch_dtype == torch.bfloat16,
        fp16=torch_dtype == torch.float16,
        use_cpu_initialization=use_cpu_initialization,
        # Off on purpose: every forward_backward call pads its micro-batches to one shape and passes
        # it, so pipeline stages size their p2p buffers from the call's arguments. (On, megatron
        # exchanges shapes first, which deadlocks the interleaved schedule on gloo.)
        variable_seq_lengths=False,
        batch_p2p_comm=False,
        pipeline_model_parallel_layout=layout.pipeline_layout(args.config["num_layers"]),
        virtual_pipeline_model_parallel_size=layout.vpp_size(args.config["num_layers"]),
    )
    if recompute:
        kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    kwargs.update(overrides)
    config_cls = MLATransformerConfig if args.mla else TransformerConfig
    config = config_cls(**kwargs)
    for note in args.notes:
        log.info(note)
    return ModelPlan(hf=dict(hf), args=args, config=config, layout=layout,
                     padded_vocab_size=padded_vocab_size(args.vocab_size, layout.tp, make_vocab_size_divisible_by))


def build_model(plan: ModelPlan, core_attention: type) -> list[GPTModel]:
    """This rank's model chunks (one per virtual pipeline stage). Parallel state must be set up."""
    vpp = plan.config.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        chunks.append(GPTModel(
            config=plan.config,
            transformer_layer_spec=decoder_block_spec(plan.config, core_attention, vp_stage=stage),
            vocab_size=plan.padded_vocab_size,
            pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            parallel_output=True,
            vp_stage=stage,
            **plan.args.model,
        ))
    return chunks
