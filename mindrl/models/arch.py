"""`Architecture`: everything mindrl knows about one HF `model_type`, in one record.

An architecture file (qwen2.py, llama.py, deepseek_v3.py) defines, side by side:
- `to_megatron(hf, mtp_num_layers)`: the HF config -> megatron-core arguments (`MegatronArgs`);
- `hf_rules(hf)`: which HF tensors make each canonical megatron tensor, and how (`Rule.kind`);
- `splits`: how each canonical tensor is split over tensor-parallel ranks (checked against
  megatron's own `partition_dim` attributes on live models by tests/checkpoint/test_logits.py);
- optionally `extra_hf_tensor(hf, name)`: HF tensors with no megatron counterpart that HF
  transformers ignores too (DeepSeek's MTP layers), and `scale_down(cfg, **sizes)`: how a tiny
  test copy shrinks the architecture's own structures (MLA dims, experts).
It ends with one `ARCH = Architecture(...)`, and `registry.ARCHITECTURES` gets one line.

Rule kinds (the layout transforms live in `mindrl.checkpoint.hf_mapping.Mapping`):
- "copy": same tensor, renamed.
- "qkv": q, k, v (weights or biases) -> megatron's `linear_qkv`, interleaved per KV group
  [q heads of group g; k_g; v_g] so that a contiguous TP split gives every rank whole groups.
- "gated": SwiGLU gate_proj, up_proj -> `linear_fc1` = cat[gate; up].
- "rope_q" / "rope_kv": DeepSeek MLA rope rows (see deepseek_v3.py).

Pure data and shape arithmetic: no torch tensors, no process groups.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from mindrl.models.args import MegatronArgs
from mindrl.models.hf_config import head_dim, require

Shape = tuple[int, ...]
# (canonical-name suffix, TP split dim, SwiGLU-gated). Column-parallel layers split their output
# rows (dim 0), row-parallel ones their input columns (dim 1); a tensor matching no suffix is
# replicated over TP (norms, the router, MLA's TP-duplicated kv down-projection).
Split = tuple[str, int, bool]

# The splits every decoder here shares: SwiGLU MLP (dense, experts, shared experts), the attention
# output projection, and the vocab-parallel embedding and output layer.
COMMON_SPLITS: tuple[Split, ...] = (
    ("linear_fc1.weight", 0, True),
    ("linear_fc2.weight", 1, False),
    ("linear_proj.weight", 1, False),
    ("embedding.word_embeddings.weight", 0, False),
    ("output_layer.weight", 0, False),
)


@dataclass(frozen=True)
class Rule:
    """One canonical tensor: the HF tensors it is made of, how (`kind`), and the shapes."""

    canonical: str
    hf: tuple[str, ...]
    kind: str
    shape: Shape  # canonical shape
    hf_shapes: tuple[Shape, ...]


@dataclass(frozen=True)
class Architecture:
    model_type: str
    to_megatron: Callable[..., MegatronArgs]  # (hf, mtp_num_layers=0) -> MegatronArgs
    hf_rules: Callable[[Mapping[str, Any]], list[Rule]]
    splits: tuple[Split, ...]
    extra_hf_tensor: Callable[[Mapping[str, Any], str], bool] = lambda hf, name: False
    # `hf_config.scale_down` for the architecture's own structures: (cfg, **sizes) -> None, in place.
    scale_down: Callable[..., None] | None = None

    def split_of(self, canonical: str) -> tuple[int | None, bool]:
        """(TP split dim or None for replicated, SwiGLU-gated) of a canonical tensor."""
        for suffix, dim, gated in self.splits:
            if canonical.endswith(suffix):
                return dim, gated
        return None, False


def no_mtp(model_type: str, mtp_num_layers: int) -> None:
    if mtp_num_layers:
        raise NotImplementedError(f"{model_type}: multi-token prediction is not supported")


# ---- rule building blocks shared by the architecture files ---------------------------------------
def rule(canonical: str, hf: list[str] | str, kind: str, hf_shapes: list[Shape]) -> Rule:
    hf_t = (hf,) if isinstance(hf, str) else tuple(hf)
    if kind == "copy" or kind.startswith("rope"):
        shape = hf_shapes[0]
    else:  # concatenated along dim 0
        shape = (sum(s[0] for s in hf_shapes), *hf_shapes[0][1:])
    return Rule(canonical, hf_t, kind, tuple(shape), tuple(tuple(s) for s in hf_shapes))


def swiglu_rules(c: str, h: str, hidden: int, inter: int) -> list[Rule]:
    return [rule(f"{c}.linear_fc1.weight", [f"{h}.gate_proj.weight", f"{h}.up_proj.weight"], "gated",
                 [(inter, hidden), (inter, hidden)]),
            rule(f"{c}.linear_fc2.weight", f"{h}.down_proj.weight", "copy", [(hidden, inter)])]


def embedding_rules(hf: Mapping[str, Any]) -> tuple[list[Rule], list[Rule]]:
    """(first, last): word embeddings; final norm and, unless tied, the output layer."""
    hidden, vocab = int(require(hf, "hidden_size")), int(require(hf, "vocab_size"))
    first = [rule("embedding.word_embeddings.weight", "model.embed_tokens.weight", "copy", [(vocab, hidden)])]
    last = [rule("decoder.final_layernorm.weight", "model.norm.weight", "copy", [(hidden,)])]
    if not hf.get("tie_word_embeddings", False):  # tied: HF has no lm_head in the file, canonical no output_layer
        last.append(rule("output_layer.weight", "lm_head.weight", "copy", [(vocab, hidden)]))
    return first, last


def gqa_rules(hf: Mapping[str, Any], *, qkv_bias: bool) -> list[Rule]:
    """A GQA attention (optionally with QKV bias) + SwiGLU MLP decoder: Qwen2, Llama."""
    hidden, inter = int(require(hf, "hidden_size")), int(require(hf, "intermediate_size"))
    nh = int(require(hf, "num_attention_heads"))
    d, ng = head_dim(hf), int(hf.get("num_key_value_heads") or nh)
    first, last = embedding_rules(hf)
    rules = list(first)
    for i in range(int(require(hf, "num_hidden_layers"))):
        c, h = f"decoder.layers.{i}", f"model.layers.{i}"
        a = f"{h}.self_attn"
        rules.append(rule(f"{c}.input_layernorm.weight", f"{h}.input_layernorm.weight", "copy", [(hidden,)]))
        rules.append(rule(f"{c}.self_attention.linear_qkv.weight", [f"{a}.q_proj.weight", f"{a}.k_proj.weight",
                          f"{a}.v_proj.weight"], "qkv", [(nh * d, hidden), (ng * d, hidden), (ng * d, hidden)]))
        if qkv_bias:
            rules.append(rule(f"{c}.self_attention.linear_qkv.bias", [f"{a}.q_proj.bias", f"{a}.k_proj.bias",
                              f"{a}.v_proj.bias"], "qkv", [(nh * d,), (ng * d,), (ng * d,)]))
        rules.append(rule(f"{c}.self_attention.linear_proj.weight", f"{a}.o_proj.weight", "copy", [(hidden, nh * d)]))
        rules.append(rule(f"{c}.pre_mlp_layernorm.weight", f"{h}.post_attention_layernorm.weight", "copy", [(hidden,)]))
        rules += swiglu_rules(f"{c}.mlp", f"{h}.mlp", hidden, inter)
    return rules + last


# The fused QKV projection of a GQA decoder: column-parallel, whole KV groups per rank.
GQA_SPLITS: tuple[Split, ...] = (("linear_qkv.weight", 0, False), ("linear_qkv.bias", 0, False))
