"""HF tensor names and layouts <-> the canonical megatron state dict, for one model config.

The canonical state dict (see `mindrl.models.sharding`) uses megatron-core names with global layer
and expert indices, merged over TP, vocab unpadded. Which HF tensors make each canonical tensor
(the `Rule`s) and how each is split over TP belong to the architecture's record
(`mindrl.models.registry.ARCHITECTURES`, one file per architecture); this module applies them:
`Mapping(hf_config)` holds the rules of one model and does the layout transforms of each rule kind
("copy", "qkv", "gated", "rope_q", "rope_kv"; see mindrl/models/arch.py).

Everything here is pure tensor work on CPU; no process group, no megatron import.
"""
from __future__ import annotations

from typing import Any, Mapping as TMapping

import torch

from mindrl.models.arch import Rule
from mindrl.models.hf_config import head_dim, require
from mindrl.models.registry import architecture_for


class Mapping:
    """The rules of one model (a config), with the layout transforms between HF and canonical."""

    def __init__(self, hf_cfg: TMapping[str, Any]) -> None:
        self.cfg = dict(hf_cfg)
        self.arch = architecture_for(self.cfg)  # ValueError naming the supported model types
        self.model_type = self.arch.model_type
        self.num_layers = int(require(self.cfg, "num_hidden_layers"))
        self.vocab_size = int(require(self.cfg, "vocab_size"))
        self.tied = bool(self.cfg.get("tie_word_embeddings", False))
        self.num_experts = int(self.cfg.get("n_routed_experts") or 0) or None
        self.rules: list[Rule] = self.arch.hf_rules(self.cfg)
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


# Tensors megatron keeps in fp32 whatever the params dtype (the router's expert bias buffer).
FP32_TENSORS = (".mlp.router.expert_bias",)


def ignored_hf_tensor(m: Mapping, name: str) -> bool:
    """HF tensors with no megatron counterpart that HF transformers ignores too: rotary caches, fp8
    scales (consumed by dequantisation), and the architecture's own (DeepSeek's MTP layers)."""
    if name.endswith(("rotary_emb.inv_freq", "weight_scale_inv")):
        return True
    return m.arch.extra_hf_tensor(m.cfg, name)
