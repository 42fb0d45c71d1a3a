"""DeepSeek-V3 / R1: multi-latent attention (MLA) with YaRN rope, and DeepSeekMoE — sigmoid router
with expert bias (aux-loss-free balancing), group-limited routing, shared experts, first-k dense.

Multi-token prediction (MTP) is not built: the HF config's `num_nextn_predict_layers` describes
extra weights that HF transformers ignores too; asking for MTP (`mtp_num_layers > 0`) fails.

The whole architecture record: HF config -> megatron arguments, HF tensor names, TP splits.

Rope rows ("rope_q" / "rope_kv" rules): the rope rows of q_b_proj / q_proj (per head) and the last
qk_rope_head_dim rows of kv_a_proj_with_mqa. HF with `rope_interleave: true` (the DeepSeek-V3
default) permutes the rope dims to [x0, x2, ...; x1, x3, ...] and rotates halves; megatron-core's
MLA rope (`_apply_rotary_pos_emb_bshd(multi_latent_attention=True)`) does the same permutation,
so the rows are copied as stored. Only a `rope_interleave: false` checkpoint needs its rope rows
pre-permuted by the inverse (a pure row permutation: bit-exact both ways).
"""
from __future__ import annotations

from typing import Any, Mapping

from mindrl.models.arch import COMMON_SPLITS, Architecture, Rule, Split, embedding_rules, rule, swiglu_rules
from mindrl.models.args import COMMON_CONFIG, MegatronArgs
from mindrl.models.hf_config import require, rope_scaling, rope_theta


def to_megatron(hf: Mapping[str, Any], mtp_num_layers: int = 0) -> MegatronArgs:
    if mtp_num_layers:
        raise NotImplementedError("deepseek_v3: multi-token prediction (mtp_num_layers > 0) is not "
                                  "supported yet; set mtp_num_layers: 0 (MTP is not used by GRPO)")
    if hf.get("scoring_func", "sigmoid") != "sigmoid" or not hf.get("norm_topk_prob", True):
        raise ValueError("deepseek_v3: only scoring_func=sigmoid with norm_topk_prob=true is supported "
                         "(megatron's sigmoid router normalises the top-k scores)")
    if hf.get("topk_method", "noaux_tc") not in ("noaux_tc", "greedy", "group_limited_greedy"):
        raise ValueError(f"deepseek_v3: topk_method={hf.get('topk_method')!r} not supported")
    num_layers = int(require(hf, "num_hidden_layers"))
    first_dense = int(hf.get("first_k_dense_replace", 0))
    if not 0 <= first_dense <= num_layers:
        raise ValueError(f"deepseek_v3: first_k_dense_replace={first_dense} outside [0, {num_layers}]")
    num_experts = int(require(hf, "n_routed_experts"))
    moe_ffn = int(require(hf, "moe_intermediate_size"))
    n_group = hf.get("n_group")
    scaling = rope_scaling(hf)
    config = dict(
        COMMON_CONFIG,
        num_layers=num_layers,
        hidden_size=int(require(hf, "hidden_size")),
        ffn_hidden_size=int(require(hf, "intermediate_size")),
        num_attention_heads=int(require(hf, "num_attention_heads")),
        layernorm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        add_qkv_bias=bool(hf.get("attention_bias", False)),
        init_method_std=float(hf.get("initializer_range", 0.02)),
        # MLA
        multi_latent_attention=True,
        q_lora_rank=hf.get("q_lora_rank"),
        kv_lora_rank=int(require(hf, "kv_lora_rank")),
        qk_head_dim=int(require(hf, "qk_nope_head_dim")),
        qk_pos_emb_head_dim=int(require(hf, "qk_rope_head_dim")),
        v_head_dim=int(require(hf, "v_head_dim")),
        qk_layernorm=True,  # HF q_a_layernorm / kv_a_layernorm on the compressed q and kv
        rotary_base=rope_theta(hf),
        rope_type="rope" if scaling is None else "yarn",
        # MoE
        num_moe_experts=num_experts,
        moe_router_topk=int(require(hf, "num_experts_per_tok")),
        moe_ffn_hidden_size=moe_ffn,
        moe_shared_expert_intermediate_size=int(hf.get("n_shared_experts") or 0) * moe_ffn or None,
        moe_layer_freq=[0] * first_dense + [1] * (num_layers - first_dense),
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=hf.get("topk_method", "noaux_tc") == "noaux_tc",
        moe_router_num_groups=int(n_group) if n_group and int(n_group) > 1 else None,
        moe_router_group_topk=int(hf["topk_group"]) if n_group and int(n_group) > 1 else None,
        moe_router_topk_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
        moe_router_dtype="fp32",
        # RL fine-tuning keeps the balance through the expert bias, not an auxiliary loss.
        moe_router_load_balancing_type="none",
        moe_aux_loss_coeff=0.0,
        moe_grouped_gemm=False,
        moe_token_dispatcher_type="alltoall",
    )
    if scaling is None:
        # MLATransformerConfig defaults to DeepSeek-V3's yarn numbers (factor 40, mscale 0.707) and
        # scales the softmax by them even with plain rope; HF uses 1/sqrt(head_dim) then.
        config.update(rotary_scaling_factor=1.0, mscale=1.0, mscale_all_dim=0.0)
    else:
        if scaling["rope_type"] != "yarn":
            raise ValueError(f"deepseek_v3: rope_scaling type {scaling['rope_type']!r} not supported (only yarn)")
        config.update(
            rotary_scaling_factor=float(scaling["factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
            beta_fast=float(scaling.get("beta_fast", 32)),
            beta_slow=float(scaling.get("beta_slow", 1)),
            mscale=float(scaling.get("mscale", 1.0)),
            mscale_all_dim=float(scaling.get("mscale_all_dim", 0.0)),
        )
    model = dict(
        max_sequence_length=int(hf.get("max_position_embeddings", 4096)),
        position_embedding_type="rope",  # MLA applies its own (yarn) rope inside attention
        share_embeddings_and_output_weights=bool(hf.get("tie_word_embeddings", False)),
    )
    notes = []
    if hf.get("num_nextn_predict_layers"):
        notes.append(f"num_nextn_predict_layers={hf['num_nextn_predict_layers']}: MTP weights not built")
    return MegatronArgs(config=config, model=model, mla=True, num_experts=num_experts, qk_layernorm=True,
                        vocab_size=int(require(hf, "vocab_size")),
                        tie_word_embeddings=model["share_embeddings_and_output_weights"], notes=notes)


def hf_rules(hf: Mapping[str, Any]) -> list[Rule]:
    """MLA attention, first-k dense layers, MoE with shared experts and expert bias."""
    hidden, inter, n = int(hf["hidden_size"]), int(hf["intermediate_size"]), int(hf["num_attention_heads"])
    q_rank, kv_rank = hf.get("q_lora_rank"), int(hf["kv_lora_rank"])
    nope, rope, v_dim = int(hf["qk_nope_head_dim"]), int(hf["qk_rope_head_dim"]), int(hf["v_head_dim"])
    moe_inter, num_experts = int(hf["moe_intermediate_size"]), int(hf["n_routed_experts"])
    shared_inter = int(hf.get("n_shared_experts") or 0) * moe_inter
    first_dense = int(hf.get("first_k_dense_replace", 0))
    first, last = embedding_rules(hf)
    rules = list(first)
    for i in range(int(require(hf, "num_hidden_layers"))):
        c, h = f"decoder.layers.{i}", f"model.layers.{i}"
        a, ca = f"{h}.self_attn", f"{c}.self_attention"
        rules.append(rule(f"{c}.input_layernorm.weight", f"{h}.input_layernorm.weight", "copy", [(hidden,)]))
        if q_rank is None:
            rules.append(rule(f"{ca}.linear_q_proj.weight", f"{a}.q_proj.weight", "rope_q", [(n * (nope + rope), hidden)]))
        else:
            q_rank = int(q_rank)
            rules.append(rule(f"{ca}.linear_q_down_proj.weight", f"{a}.q_a_proj.weight", "copy", [(q_rank, hidden)]))
            rules.append(rule(f"{ca}.q_layernorm.weight", f"{a}.q_a_layernorm.weight", "copy", [(q_rank,)]))
            rules.append(rule(f"{ca}.linear_q_up_proj.weight", f"{a}.q_b_proj.weight", "rope_q", [(n * (nope + rope), q_rank)]))
        rules.append(rule(f"{ca}.linear_kv_down_proj.weight", f"{a}.kv_a_proj_with_mqa.weight", "rope_kv",
                          [(kv_rank + rope, hidden)]))
        rules.append(rule(f"{ca}.kv_layernorm.weight", f"{a}.kv_a_layernorm.weight", "copy", [(kv_rank,)]))
        rules.append(rule(f"{ca}.linear_kv_up_proj.weight", f"{a}.kv_b_proj.weight", "copy", [(n * (nope + v_dim), kv_rank)]))
        rules.append(rule(f"{ca}.linear_proj.weight", f"{a}.o_proj.weight", "copy", [(hidden, n * v_dim)]))
        rules.append(rule(f"{c}.pre_mlp_layernorm.weight", f"{h}.post_attention_layernorm.weight", "copy", [(hidden,)]))
        if i < first_dense:
            rules += swiglu_rules(f"{c}.mlp", f"{h}.mlp", hidden, inter)
            continue
        rules.append(rule(f"{c}.mlp.router.weight", f"{h}.mlp.gate.weight", "copy", [(num_experts, hidden)]))
        if hf.get("topk_method", "noaux_tc") == "noaux_tc":
            rules.append(rule(f"{c}.mlp.router.expert_bias", f"{h}.mlp.gate.e_score_correction_bias", "copy",
                              [(num_experts,)]))
        for e in range(num_experts):
            rules += swiglu_rules(f"{c}.mlp.experts.local_experts.{e}", f"{h}.mlp.experts.{e}", hidden, moe_inter)
        if shared_inter:
            rules += swiglu_rules(f"{c}.mlp.shared_experts", f"{h}.mlp.shared_experts", hidden, shared_inter)
    return rules + last


# MLA's q projections and kv up-projection are column-parallel; its kv down-projection (and the
# router) are replicated: megatron keeps them whole on every TP rank.
MLA_SPLITS: tuple[Split, ...] = (
    ("linear_q_proj.weight", 0, False),
    ("linear_q_down_proj.weight", 0, False),
    ("linear_q_up_proj.weight", 0, False),
    ("linear_kv_up_proj.weight", 0, False),
)


def mtp_hf_tensor(hf: Mapping[str, Any], name: str) -> bool:
    """The MTP layers' weights: model.layers.{>= num_hidden_layers}.* (not built, see above)."""
    return name.startswith("model.layers.") and int(name.split(".")[2]) >= int(hf["num_hidden_layers"])


def scale_down(cfg: dict[str, Any], *, num_layers: int, num_heads: int, num_experts: int, experts_per_token: int,
               moe_intermediate_size: int, first_k_dense: int) -> None:
    """MLA dims and MoE grouping shrunk in proportion, so the structure (q/kv LoRA, rope/nope split,
    groups, shared experts, first-k dense layers) is all still there."""
    groups = max(1, min(int(cfg.get("n_group") or 1), num_experts // 2))
    cfg.update(
        num_key_value_heads=num_heads,
        q_lora_rank=None if cfg.get("q_lora_rank") is None else 32,
        kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8,
        n_routed_experts=num_experts, num_experts_per_tok=experts_per_token,
        moe_intermediate_size=moe_intermediate_size,
        n_group=groups, topk_group=max(1, groups // 2),
        first_k_dense_replace=min(first_k_dense, num_layers - 1),
    )


ARCH = Architecture("deepseek_v3", to_megatron, hf_rules, splits=MLA_SPLITS + COMMON_SPLITS,
                    extra_hf_tensor=mtp_hf_tensor, scale_down=scale_down)
