"""Llama 2/3.x: GQA, SwiGLU, RMSNorm, rope with Llama-3.1-style frequency scaling.

The whole architecture record: HF config -> megatron arguments, HF tensor names, TP splits.
"""
from __future__ import annotations

from typing import Any, Mapping

from mindrl.models.arch import COMMON_SPLITS, GQA_SPLITS, Architecture, Rule, gqa_rules, no_mtp
from mindrl.models.args import MegatronArgs, gqa_decoder_config
from mindrl.models.hf_config import require, rope_scaling, rope_theta

# megatron-core's RotaryEmbedding applies llama3 scaling with these constants fixed; only the
# factor is an argument. A config with other constants would silently get different frequencies.
_MEGATRON_LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def to_megatron(hf: Mapping[str, Any], mtp_num_layers: int = 0) -> MegatronArgs:
    no_mtp("llama", mtp_num_layers)
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
    config = gqa_decoder_config(hf, add_qkv_bias=bool(hf.get("attention_bias", False)), default_eps=1e-5)
    return MegatronArgs(config=config, model=model, vocab_size=int(require(hf, "vocab_size")),
                        tie_word_embeddings=model["share_embeddings_and_output_weights"])


def hf_rules(hf: Mapping[str, Any]) -> list[Rule]:
    return gqa_rules(hf, qkv_bias=bool(hf.get("attention_bias", False)))


ARCH = Architecture("llama", to_megatron, hf_rules, splits=GQA_SPLITS + COMMON_SPLITS)
