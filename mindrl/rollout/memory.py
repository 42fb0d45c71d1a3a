"""Rollout memory per device for a DeepSeek-V3-style (MLA + MoE) model in vLLM's layout: the
arithmetic behind a recipe's rollout layout (docs/rollout.md, "The 671B layout").

vLLM's layout (`tensor_parallel_size=TP`, `enable_expert_parallel=True`, `data_parallel_size=EP/TP`):
every TP rank holds 1/TP of the embedding, LM head, the TP-split attention projections
(q_b, kv_b, o), the dense MLPs and the shared experts; the down-projections q_a / kv_a (vLLM's
replicated `fused_qkv_a_proj`), norms and the router are whole on every rank; routed experts are
not TP-split but spread whole over the EP = TP x DP ranks (`num_experts / EP` per rank and layer).
MLA caches one latent per token and layer (kv_lora_rank + qk_rope_head_dim values), the same on
every TP rank (not split). Not verified on hardware: the counts are of the model's tensors, not of a
device's allocator (no padding, workspace or fragmentation).

May import: nothing of mindrl.
"""
from __future__ import annotations

from typing import Any, Mapping


def deepseek_v3_param_counts(hf: Mapping[str, Any]) -> dict[str, int]:
    """Parameter count of each part of the whole model (MTP layers excluded), by HF tensor group:
    vocab (embedding + LM head), attn_split / attn_whole (MLA projections split over TP / kept whole,
    layer norms included), dense (MLP of the first `first_k_dense_replace` layers), shared (shared
    experts), router (gate weight and score-correction bias), experts (routed experts)."""
    if hf.get("model_type") != "deepseek_v3":
        raise ValueError(f"rollout memory arithmetic covers deepseek_v3 only, got model_type={hf.get('model_type')!r}")
    h, v, layers = int(hf["hidden_size"]), int(hf["vocab_size"]), int(hf["num_hidden_layers"])
    heads, q_rank, kv_rank = int(hf["num_attention_heads"]), int(hf["q_lora_rank"]), int(hf["kv_lora_rank"])
    nope, rope, v_dim = int(hf["qk_nope_head_dim"]), int(hf["qk_rope_head_dim"]), int(hf["v_head_dim"])
    dense_layers = int(hf.get("first_k_dense_replace", 0))
    moe_layers = layers - dense_layers
    experts, moe_i = int(hf["n_routed_experts"]), int(hf["moe_intermediate_size"])
    shared = int(hf.get("n_shared_experts") or 0)
    vocab = v * h * (1 if hf.get("tie_word_embeddings") else 2)
    attn_split = heads * (nope + rope) * q_rank + heads * (nope + v_dim) * kv_rank + heads * v_dim * h
    attn_whole = h * q_rank + q_rank + h * (kv_rank + rope) + kv_rank + 2 * h  # + input / post-attention norms
    return {"vocab": vocab + h,  # + the final norm
            "attn_split": layers * attn_split, "attn_whole": layers * attn_whole,
            "dense": dense_layers * 3 * h * int(hf["intermediate_size"]),
            "shared": moe_layers * shared * 3 * h * moe_i,
            "router": moe_layers * (experts * h + experts),
            "experts": moe_layers * experts * 3 * h * moe_i}


def rollout_bytes_per_rank(hf: Mapping[str, Any], tp: int, ep: int, bytes_per_param: int = 2) -> dict[str, float]:
    """Bytes of rollout weights one rank holds in vLLM's layout (module docstring), by part, plus "total"."""
    n = deepseek_v3_param_counts(hf)
    experts = int(hf["n_routed_experts"])
    if experts % ep:
        raise ValueError(f"{experts} routed experts do not split over EP={ep}")
    per_rank = {"vocab": n["vocab"] / tp, "attention": n["attn_split"] / tp + n["attn_whole"],
                "dense_mlp": n["dense"] / tp, "shared_experts": n["shared"] / tp, "router": n["router"],
                "routed_experts": n["experts"] / ep}
    out = {k: v * bytes_per_param for k, v in per_rank.items()}
    out["total"] = sum(out.values())
    return out


def mla_kv_bytes_per_token(hf: Mapping[str, Any], bytes_per_value: int = 2) -> int:
    """KV-cache bytes one token takes on every rank (MLA latent + RoPE key, all layers; not split over TP)."""
    return (int(hf["kv_lora_rank"]) + int(hf["qk_rope_head_dim"])) * int(hf["num_hidden_layers"]) * bytes_per_value
