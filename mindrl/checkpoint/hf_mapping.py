"""HF tensor names and layouts <-> the canonical megatron state dict, per architecture.

The canonical state dict (see `mindrl.models.sharding`) uses megatron-core names with global layer
and expert indices, merged over TP, vocab unpadded. A `Rule` says which HF tensors make one
canonical tensor and how (`kind`):

- "copy": same tensor, renamed.
- "qkv": q, k, v (weights or biases) -> megatron's `linear_qkv`, interleaved per KV group
  [q heads of group g; k_g; v_g] so that a contiguous TP split gives every rank whole groups.
- "gated": SwiGLU gate_proj, up_proj -> `linear_fc1` = cat[gate; up].
- "rope_q" / "rope_kv": DeepSeek MLA's rope rows (of q_b_proj / q_proj per head, and the last
  qk_rope_head_dim rows of kv_a_proj_with_mqa). HF with `rope_interleave: true` (the DeepSeek-V3
  default) permutes the rope dims to [x0, x2, ...; x1, x3, ...] and rotates halves; megatron-core's
  MLA rope (`_apply_rotary_pos_emb_bshd(multi_latent_attention=True)`) does the same permutation,
  so the rows are copied as stored. Only a `rope_interleave: false` checkpoint needs its rope rows
  pre-permuted by the inverse (a pure row permutation: bit-exact both ways).

Everything here is pure tensor work on CPU; no process group, no megatron import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping as TMapping

import torch

from mindrl.models.hf_config import head_dim, require
from mindrl.models.registry import ARCHITECTURES

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Rule:
    canonical: str
    hf: tuple[str, ...]
    kind: str
    shape: Shape  # canonical shape
    hf_shapes: tuple[Shape, ...]


class Mapping:
    """The rules of one model (a config), with the layout transforms between HF and canonical."""

    def __init__(self, hf_cfg: TMapping[str, Any]) -> None:
        self.cfg = dict(hf_cfg)
        self.model_type = str(self.cfg.get("model_type"))
        if self.model_type not in MAPPINGS:
            raise ValueError(f"unknown model type {self.model_type!r}; supported: {', '.join(MAPPINGS)}")
        self.num_layers = int(require(self.cfg, "num_hidden_layers"))
        self.vocab_size = int(require(self.cfg, "vocab_size"))
        self.tied = bool(self.cfg.get("tie_word_embeddings", False))
        self.num_experts = int(self.cfg.get("n_routed_experts") or 0) or None
        self.rules: list[Rule] = MAPPINGS[self.model_type](self)
        self.by_canonical = {r.canonical: r for r in self.rules}
        self.by_hf = {name: r for r in self.rules for name in r.hf}

    # ---- layout transforms -------------------------------------------------------------------
    def to_canonical(self, rule: Rule, tensors: list[torch.Tensor]) -> torch.Tensor:
        if rule.kind == "copy":
            return tensors[0]
        if rule.kind == "gated":
            return torch.cat(tensors, dim=0)
        if rule.kind == "qkv":
            q, k, v = tensors
            ng = k.shape[0] // self.head_dim
            rest = q.shape[1:]
            return torch.cat([q.reshape(ng, -1, *rest), k.reshape(ng, -1, *rest), v.reshape(ng, -1, *rest)],
                             dim=1).reshape(-1, *rest)
        if rule.kind in ("rope_q", "rope_kv"):
            return self._permute_rope(rule.kind, tensors[0], torch.argsort(self._rope_perm))
        raise ValueError(f"unknown rule kind {rule.kind!r}")

    def to_hf(self, rule: Rule, t: torch.Tensor) -> list[torch.Tensor]:
        if rule.kind == "copy":
            return [t]
        if rule.kind == "gated":
            return list(t.chunk(2, dim=0))
        if rule.kind == "qkv":
            d = self.head_dim
            ng, nh = self.num_kv_heads, self.num_heads
            g = t.reshape(ng, (nh // ng + 2) * d, *t.shape[1:])
            q, k, v = g.split([nh // ng * d, d, d], dim=1)
            return [x.reshape(-1, *t.shape[1:]).contiguous() for x in (q, k, v)]
        if rule.kind in ("rope_q", "rope_kv"):
            return [self._permute_rope(rule.kind, t, self._rope_perm)]
        raise ValueError(f"unknown rule kind {rule.kind!r}")

    @property
    def _rope_perm(self) -> torch.Tensor:
        r = int(self.cfg["qk_rope_head_dim"])
        return torch.cat([torch.arange(0, r, 2), torch.arange(1, r, 2)])

    def _permute_rope(self, kind: str, t: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        if self.cfg.get("rope_interleave", True):  # megatron permutes like HF does
            return t
        r = int(self.cfg["qk_rope_head_dim"])
        if kind == "rope_kv":  # rows [kv_lora_rank compressed; rope]
            return torch.cat([t[:-r], t[-r:][perm]])
        per_head = int(self.cfg["qk_nope_head_dim"]) + r  # rows per head [nope; rope]
        h = t.reshape(-1, per_head, t.shape[-1])
        return torch.cat([h[:, :-r], h[:, -r:][:, perm]], dim=1).reshape(t.shape)

    # ---- shapes ------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return head_dim(self.cfg)

    @property
    def num_heads(self) -> int:
        return int(self.cfg["num_attention_heads"])

    @property
    def num_kv_heads(self) -> int:
        return int(self.cfg.get("num_key_value_heads") or self.num_heads)


def _rule(canonical: str, hf: list[str] | str, kind: str, hf_shapes: list[Shape]) -> Rule:
    hf_t = (hf,) if isinstance(hf, str) else tuple(hf)
    if kind == "copy" or kind.startswith("rope"):
        shape = hf_shapes[0]
    else:
        shape = (sum(s[0] for s in hf_shapes), *hf_shapes[0][1:])
    return Rule(canonical, hf_t, kind, tuple(shape), tuple(tuple(s) for s in hf_shapes))


def _swiglu(c: str, h: str, hidden: int, inter: int) -> list[Rule]:
    return [_rule(f"{c}.linear_fc1.weight", [f"{h}.gate_proj.weight", f"{h}.up_proj.weight"], "gated",
                  [(inter, hidden), (inter, hidden)]),
            _rule(f"{c}.linear_fc2.weight", f"{h}.down_proj.weight", "copy", [(hidden, inter)])]


def _embeddings(m: Mapping, hidden: int) -> tuple[list[Rule], list[Rule]]:
    first = [_rule("embedding.word_embeddings.weight", "model.embed_tokens.weight", "copy", [(m.vocab_size, hidden)])]
    last = [_rule("decoder.final_layernorm.weight", "model.norm.weight", "copy", [(hidden,)])]
    if not m.tied:  # tied: HF has no lm_head in the file, canonical has no output_layer
        last.append(_rule("output_layer.weight", "lm_head.weight", "copy", [(m.vocab_size, hidden)]))
    return first, last


def gqa_rules(m: Mapping) -> list[Rule]:
    """Qwen2 and Llama: GQA attention (optional QKV bias), SwiGLU MLP."""
    hidden, inter = int(m.cfg["hidden_size"]), int(m.cfg["intermediate_size"])
    d, nh, ng = m.head_dim, m.num_heads, m.num_kv_heads
    bias = m.model_type == "qwen2" or bool(m.cfg.get("attention_bias", False))
    first, last = _embeddings(m, hidden)
    rules = list(first)
    for i in range(m.num_layers):
        c, h = f"decoder.layers.{i}", f"model.layers.{i}"
        a = f"{h}.self_attn"
        rules.append(_rule(f"{c}.input_layernorm.weight", f"{h}.input_layernorm.weight", "copy", [(hidden,)]))
        rules.append(_rule(f"{c}.self_attention.linear_qkv.weight", [f"{a}.q_proj.weight", f"{a}.k_proj.weight",
                           f"{a}.v_proj.weight"], "qkv", [(nh * d, hidden), (ng * d, hidden), (ng * d, hidden)]))
        if bias:
            rules.append(_rule(f"{c}.self_attention.linear_qkv.bias", [f"{a}.q_proj.bias", f"{a}.k_proj.bias",
                               f"{a}.v_proj.bias"], "qkv", [(nh * d,), (ng * d,), (ng * d,)]))
        rules.append(_rule(f"{c}.self_attention.linear_proj.weight", f"{a}.o_proj.weight", "copy", [(hidden, nh * d)]))
        rules.append(_rule(f"{c}.pre_mlp_layernorm.weight", f"{h}.post_attention_layernorm.weight", "copy", [(hidden,)]))
        rules += _swiglu(f"{c}.mlp", f"{h}.mlp", hidden, inter)
    return rules + last


def deepseek_v3_rules(m: Mapping) -> list[Rule]:
    """DeepSeek-V3/R1: MLA attention, first-k dense layers, MoE with shared experts and expert bias."""
    cfg = m.cfg
    hidden, inter, n = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), m.num_heads
    q_rank, kv_rank = cfg.get("q_lora_rank"), int(cfg["kv_lora_rank"])
    nope, rope, v_dim = int(cfg["qk_nope_head_dim"]), int(cfg["qk_rope_head_dim"]), int(cfg["v_head_dim"])
    moe_inter, num_experts = int(cfg["moe_intermediate_size"]), int(cfg["n_routed_experts"])
    shared_inter = int(cfg.get("n_shared_experts") or 0) * moe_inter
    first_dense = int(cfg.get("first_k_dense_replace", 0))
    first, last = _embeddings(m, hidden)
    rules = list(first)
    for i in range(m.num_layers):
        c, h = f"decoder.layers.{i}", f"model.layers.{i}"
        a, ca = f"{h}.self_attn", f"{c}.self_attention"
        rules.append(_rule(f"{c}.input_layernorm.weight", f"{h}.input_layernorm.weight", "copy", [(hidden,)]))
        if q_rank is None:
            rules.append(_rule(f"{ca}.linear_q_proj.weight", f"{a}.q_proj.weight", "rope_q", [(n * (nope + rope), hidden)]))
        else:
            q_rank = int(q_rank)
            rules.append(_rule(f"{ca}.linear_q_down_proj.weight", f"{a}.q_a_proj.weight", "copy", [(q_rank, hidden)]))
            rules.append(_rule(f"{ca}.q_layernorm.weight", f"{a}.q_a_layernorm.weight", "copy", [(q_rank,)]))
            rules.append(_rule(f"{ca}.linear_q_up_proj.weight", f"{a}.q_b_proj.weight", "rope_q", [(n * (nope + rope), q_rank)]))
        rules.append(_rule(f"{ca}.linear_kv_down_proj.weight", f"{a}.kv_a_proj_with_mqa.weight", "rope_kv",
                           [(kv_rank + rope, hidden)]))
        rules.append(_rule(f"{ca}.kv_layernorm.weight", f"{a}.kv_a_layernorm.weight", "copy", [(kv_rank,)]))
        rules.append(_rule(f"{ca}.linear_kv_up_proj.weight", f"{a}.kv_b_proj.weight", "copy", [(n * (nope + v_dim), kv_rank)]))
        rules.append(_rule(f"{ca}.linear_proj.weight", f"{a}.o_proj.weight", "copy", [(hidden, n * v_dim)]))
        rules.append(_rule(f"{c}.pre_mlp_layernorm.weight", f"{h}.post_attention_layernorm.weight", "copy", [(hidden,)]))
        if i < first_dense:
            rules += _swiglu(f"{c}.mlp", f"{h}.mlp", hidden, inter)
            continue
        rules.append(_rule(f"{c}.mlp.router.weight", f"{h}.mlp.gate.weight", "copy", [(num_experts, hidden)]))
        if cfg.get("topk_method", "noaux_tc") == "noaux_tc":
            rules.append(_rule(f"{c}.mlp.router.expert_bias", f"{h}.mlp.gate.e_score_correction_bias", "copy",
                               [(num_experts,)]))
        for e in range(num_experts):
            rules += _swiglu(f"{c}.mlp.experts.local_experts.{e}", f"{h}.mlp.experts.{e}", hidden, moe_inter)
        if shared_inter:
            rules += _swiglu(f"{c}.mlp.shared_experts", f"{h}.mlp.shared_experts", hidden, shared_inter)
    return rules + last


MAPPINGS: dict[str, Callable[[Mapping], list[Rule]]] = {
    "qwen2": gqa_rules,
    "llama": gqa_rules,
    "deepseek_v3": deepseek_v3_rules,
}
assert set(MAPPINGS) == set(ARCHITECTURES), "every model architecture needs a checkpoint mapping"

# Tensors megatron keeps in fp32 whatever the params dtype (the router's expert bias buffer).
FP32_TENSORS = (".mlp.router.expert_bias",)


def ignored_hf_tensor(m: Mapping, name: str) -> bool:
    """HF tensors with no megatron counterpart that HF transformers ignores too: DeepSeek's MTP layers
    (model.layers.{>= num_hidden_layers}), rotary caches, fp8 scales (consumed by dequantisation)."""
    if name.endswith(("rotary_emb.inv_freq", "weight_scale_inv")):
        return True
    if m.model_type == "deepseek_v3" and name.startswith("model.layers."):
        return int(name.split(".")[2]) >= m.num_layers
    return False
