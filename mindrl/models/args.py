"""`MegatronArgs`: what an architecture file produces from an HF config.

`config` goes to megatron-core's `TransformerConfig` (or `MLATransformerConfig` when `mla`),
`model` to `GPTModel(...)`. Parallel layout, dtype and kernel choices are added by the builder,
so an architecture file only says how the HF fields map to megatron's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn.functional as F

# Every architecture here is a pre-norm RMSNorm / SwiGLU decoder without linear biases.
COMMON_CONFIG: dict[str, Any] = dict(
    normalization="RMSNorm",
    gated_linear_unit=True,
    activation_func=F.silu,
    add_bias_linear=False,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    # Fusions need TransformerEngine/Apex/CUDA kernels; the backends choose kernels instead.
    bias_activation_fusion=False,
    bias_dropout_fusion=False,
    apply_rope_fusion=False,
    masked_softmax_fusion=False,
    gradient_accumulation_fusion=False,
    persist_layer_norm=False,
    # megatron checks this even for dense models when variable_seq_lengths is on.
    moe_token_dispatcher_type="alltoall",
)


@dataclass
class MegatronArgs:
    config: dict[str, Any]
    model: dict[str, Any]
    mla: bool = False
    num_experts: int | None = None
    qk_layernorm: bool = False
    vocab_size: int = 0  # the HF vocab size (unpadded)
    tie_word_embeddings: bool = False
    notes: list[str] = field(default_factory=list)


def gqa_decoder_config(hf: Any, *, add_qkv_bias: bool, default_eps: float) -> dict[str, Any]:
    """TransformerConfig fields of a GQA, RMSNorm, SwiGLU decoder (Qwen2, Llama)."""
    from mindrl.models.hf_config import head_dim, require

    return dict(
        COMMON_CONFIG,
        num_layers=int(require(hf, "num_hidden_layers")),
        hidden_size=int(require(hf, "hidden_size")),
        ffn_hidden_size=int(require(hf, "intermediate_size")),
        num_attention_heads=int(require(hf, "num_attention_heads")),
        num_query_groups=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
        kv_channels=head_dim(hf),
        layernorm_epsilon=float(hf.get("rms_norm_eps", default_eps)),
        add_qkv_bias=add_qkv_bias,
        init_method_std=float(hf.get("initializer_range", 0.02)),
    )
