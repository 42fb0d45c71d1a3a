"""Qwen2 / Qwen2.5: GQA with QKV bias, SwiGLU, RMSNorm, rope; tied embeddings on 0.5B/1.5B/3B.

The whole architecture record: HF config -> megatron arguments, HF tensor names, TP splits.
"""
from __future__ import annotations

from typing import Any, Mapping

from mindrl.models.arch import COMMON_SPLITS, GQA_SPLITS, Architecture, Rule, gqa_rules, no_mtp
from mindrl.models.args import MegatronArgs, gqa_decoder_config
from mindrl.models.hf_config import require, rope_scaling, rope_theta


def to_megatron(hf: Mapping[str, Any], mtp_num_layers: int = 0) -> MegatronArgs:
    no_mtp("qwen2", mtp_num_layers)
    if hf.get("use_sliding_window"):
        raise ValueError("qwen2: use_sliding_window=true is not supported (Qwen2.5 ships it off)")
    if rope_scaling(hf) is not None:
        raise ValueError(f"qwen2: rope_scaling {rope_scaling(hf)} is not supported (YaRN for long context)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"qwen2: hidden_act={hf.get('hidden_act')!r}, expected 'silu'")
    config = gqa_decoder_config(hf, add_qkv_bias=True, default_eps=1e-6)
    model = dict(
        max_sequence_length=int(hf.get("max_position_embeddings", 32768)),
        position_embedding_type="rope",
        rotary_base=rope_theta(hf),
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", False)),
    )
    return MegatronArgs(config=config, model=model, vocab_size=int(require(hf, "vocab_size")),
                        tie_word_embeddings=model["share_embeddings_and_output_weights"])


def hf_rules(hf: Mapping[str, Any]) -> list[Rule]:
    return gqa_rules(hf, qkv_bias=True)  # Qwen2 always has QKV bias (no config field says so)


ARCH = Architecture("qwen2", to_megatron, hf_rules, splits=GQA_SPLITS + COMMON_SPLITS)
