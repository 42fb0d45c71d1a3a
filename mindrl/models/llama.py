"""Llama 2/3.x: GQA, SwiGLU, RMSNorm, rope with Llama-3.1-style frequency scaling."""
from __future__ import annotations

from typing import Any, Mapping

from mindrl.models.args import COMMON_CONFIG, MegatronArgs
from mindrl.models.hf_config import head_dim, require, rope_scaling, rope_theta

# megatron-core's RotaryEmbedding applies llama3 scaling with these constants fixed; only the
# factor is an argument. A config with other constants would silently get different frequencies.
_MEGATRON_LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def to_megatron(hf: Mapping[str, Any]) -> MegatronArgs:
    if hf.get("mlp_bias"):
        raise ValueError("llama: mlp_bias=true is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"llama: hidden_act={hf.get('hidden_act')!r}, expected 'silu'")
    scaling = rope_scaling(hf)
    model: dict[str, Any] = dict(
        max_sequence_length=int(hf.get("max_position_embeddings", 8192)),
        position_embedding_type="rope",
        rotary_base=rope_theta(hf),
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", False)),
    )
    if scaling is not None:
        if scaling["rope_type"] != "llama3":
            raise ValueError(f"llama: rope_scaling type {scaling['rope_type']!r} not supported (only llama3)")
        for key, fixed in _MEGATRON_LLAMA3_FIXED.items():
            if float(scaling.get(key, fixed)) != fixed:
                raise ValueError(f"llama: rope_scaling.{key}={scaling[key]} but megatron-core fixes it at {fixed}")
        model.update(rope_scaling=True, rope_scaling_factor=float(scaling["factor"]))
    config = dict(
        COMMON_CONFIG,
        num_layers=int(require(hf, "num_hidden_layers")),
        hidden_size=int(require(hf, "hidden_size")),
        ffn_hidden_size=int(require(hf, "intermediate_size")),
        num_attention_heads=int(require(hf, "num_attention_heads")),
        num_query_groups=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
        kv_channels=head_dim(hf),
        layernorm_epsilon=float(hf.get("rms_norm_eps", 1e-5)),
        add_qkv_bias=bool(hf.get("attention_bias", False)),
        init_method_std=float(hf.get("initializer_range", 0.02)),
    )
    return MegatronArgs(config=config, model=model, vocab_size=int(require(hf, "vocab_size")),
                        tie_word_embeddings=model["share_embeddings_and_output_weights"])
