"""Qwen2 / Qwen2.5: GQA with QKV bias, SwiGLU, RMSNorm, rope; tied embeddings on 0.5B/1.5B/3B."""
from __future__ import annotations

from typing import Any, Mapping

from mindrl.models.args import COMMON_CONFIG, MegatronArgs
from mindrl.models.hf_config import head_dim, require, rope_scaling, rope_theta


def to_megatron(hf: Mapping[str, Any]) -> MegatronArgs:
    if hf.get("use_sliding_window"):
        raise ValueError("qwen2: use_sliding_window=true is not supported (Qwen2.5 ships it off)")
    if rope_scaling(hf) is not None:
        raise ValueError(f"qwen2: rope_scaling {rope_scaling(hf)} is not supported (YaRN for long context)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"qwen2: hidden_act={hf.get('hidden_act')!r}, expected 'silu'")
    config = dict(
        COMMON_CONFIG,
        num_layers=int(require(hf, "num_hidden_layers")),
        hidden_size=int(require(hf, "hidden_size")),
        ffn_hidden_size=int(require(hf, "intermediate_size")),
        num_attention_heads=int(require(hf, "num_attention_heads")),
        num_query_groups=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
        kv_channels=head_dim(hf),
        layernorm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        add_qkv_bias=True,
        init_method_std=float(hf.get("initializer_range", 0.02)),
    )
    model = dict(
        max_sequence_length=int(hf.get("max_position_embeddings", 32768)),
        position_embedding_type="rope",
        rotary_base=rope_theta(hf),
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", False)),
    )
    return MegatronArgs(config=config, model=model, vocab_size=int(require(hf, "vocab_size")),
                        tie_word_embeddings=model["share_embeddings_and_output_weights"])
