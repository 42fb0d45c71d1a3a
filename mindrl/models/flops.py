"""Model FLOPs of the phases of an RL step, from an HF config and the batch's actual token counts.

"Model FLOPs" (PaLM's MFU convention): the matmul FLOPs the model needs for the work, 2 per
multiply-add, with no recomputation counted (the fused log-prob backward recomputes the output
layer's logits, activation checkpointing recomputes layers: neither counts) and no padding (only
real tokens). Element-wise work (norms, rotary, softmax, the optimizer) is not counted: at these
shapes it is a few percent of the matmuls.

Per token, summed over layers:
- linear: 2 x (the weights a token passes through): attention projections (GQA: q, k, v, o; MLA:
  q_a / q_b or q, kv_a, kv_b, o), the MLP (SwiGLU: gate, up, down), MoE layers' router, `top_k`
  routed experts and shared experts;
- attention: 2 x (qk_dim + v_dim) x heads per (query, key) pair (QK^T and PV); a causal query at
  position t attends t + 1 keys;
- output layer: 2 x hidden x vocab, only where logits are needed.
Backward = 2 x forward (the input and the weight gradients), so an update is 3 x its forward.

Phases of a GRPO step (`step_flops`):
- rollout: each prompt's prefill once (the n samples share it), then per sample each response token
  but the last through the layers at its position, and the output layer once per sampled token;
- reference / old-log-prob forward: prompt + response - 1 input positions through the layers, the
  output layer on the response positions only (what the fused output layer computes);
- update: 3 x that forward, per epoch.

Pure Python on a config mapping; no torch (so the trainer, the benchmarks and the tests share it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence


@dataclass(frozen=True)
class FlopModel:
    """Per-token matmul FLOPs of one model (forward)."""

    linear: int  # all layers' linear layers, per token
    attention_pair: int  # all layers' attention, per (query, key) pair
    head: int  # the output layer, per position whose logits are computed

    def forward(self, tokens: int, pairs: int, head_positions: int) -> int:
        """FLOPs of a forward over `tokens` positions with `pairs` (query, key) pairs in attention and
        logits at `head_positions` positions."""
        return self.linear * tokens + self.attention_pair * pairs + self.head * head_positions


def _int(hf: Mapping[str, Any], key: str, default: Any = None) -> int:
    value = hf.get(key, default)
    if value is None:
        raise ValueError(f"flops: the model config has no {key!r}")
    return int(value)


def flop_model(hf: Mapping[str, Any]) -> FlopModel:
    """The per-token FLOPs of the model an HF config describes (qwen2 / llama GQA models, and
    deepseek_v3 MLA + MoE)."""
    h = _int(hf, "hidden_size")
    layers = _int(hf, "num_hidden_layers")
    heads = _int(hf, "num_attention_heads")
    vocab = _int(hf, "vocab_size")
    ffn = _int(hf, "intermediate_size")
    if "kv_lora_rank" in hf:  # multi-latent attention (DeepSeek-V2/V3)
        nope, rope, v_dim = _int(hf, "qk_nope_head_dim"), _int(hf, "qk_rope_head_dim"), _int(hf, "v_head_dim")
        kv_rank, q_rank = _int(hf, "kv_lora_rank"), hf.get("q_lora_rank")
        qk = nope + rope
        q = (h * int(q_rank) + int(q_rank) * heads * qk) if q_rank else h * heads * qk
        attn_weights = q + h * (kv_rank + rope) + kv_rank * heads * (nope + v_dim) + heads * v_dim * h
        pair = 2 * heads * (qk + v_dim)
    else:
        head_dim = int(hf.get("head_dim") or h // heads)
        kv = _int(hf, "num_key_value_heads", heads)
        attn_weights = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h
        pair = 2 * heads * 2 * head_dim
    dense_mlp = 3 * h * ffn
    experts = int(hf.get("n_routed_experts") or hf.get("num_experts") or 0)
    if experts:
        moe_ffn = _int(hf, "moe_intermediate_size")
        top_k = _int(hf, "num_experts_per_tok")
        shared = int(hf.get("n_shared_experts") or 0) * moe_ffn + int(hf.get("shared_expert_intermediate_size") or 0)
        moe_mlp = h * experts + top_k * 3 * h * moe_ffn + 3 * h * shared
        first_dense = int(hf.get("first_k_dense_replace", 0))
        mlp = first_dense * dense_mlp + (layers - first_dense) * moe_mlp
    else:
        mlp = layers * dense_mlp
    return FlopModel(linear=2 * (layers * attn_weights + mlp), attention_pair=layers * pair, head=2 * h * vocab)


def causal_pairs(start: int, count: int) -> int:
    """(query, key) pairs of `count` causal queries at positions start .. start + count - 1."""
    return count * (2 * start + count + 1) // 2


def training_forward_flops(fm: FlopModel, prompt_lens: Sequence[int], response_lens: Sequence[int]) -> int:
    """One log-prob forward over rows of prompt + response (`mindrl.workers.actor.SequenceBatch`): the
    layers on the prompt + response - 1 input positions, the output layer on the response positions."""
    total = 0
    for p, r in zip(prompt_lens, response_lens, strict=True):
        if r == 0:
            continue
        n = p + r - 1
        total += fm.forward(n, causal_pairs(0, n), r)
    return total


def rollout_flops(fm: FlopModel, prompt_lens: Sequence[int], response_lens: Sequence[Sequence[int]]) -> int:
    """Generation: `prompt_lens[i]` is prompt i's length, `response_lens[i]` its samples' lengths.
    Each prompt's prefill once (layers on every prompt position, logits at the last), then per sample
    its response tokens but the last through the layers (KV cache: a query at position t attends t + 1
    keys) and one output-layer row per further sampled token."""
    total = 0
    for p, samples in zip(prompt_lens, response_lens, strict=True):
        total += fm.forward(p, causal_pairs(0, p), 1 if any(samples) else 0)
        for r in samples:
            if r > 1:
                total += fm.forward(r - 1, causal_pairs(p, r - 1), r - 1)
    return total


def step_flops(hf: Mapping[str, Any] | FlopModel, prompt_lens: Sequence[int], response_lens: Sequence[Sequence[int]],
               *, trained: Sequence[int] | None = None, reference: bool = True, old_log_probs: bool = False,
               epochs: int = 1) -> dict[str, int]:
    """FLOPs per phase of one GRPO step: {"rollout", "reference", "old_log_probs", "update", "total"}.

    prompt_lens / response_lens: every generated group (dynamic sampling: every round's); `trained`:
    the indices of the groups trained on (default all)."""
    fm = hf if isinstance(hf, FlopModel) else flop_model(hf)
    idx = range(len(prompt_lens)) if trained is None else trained
    rows_p = [prompt_lens[i] for i in idx for _ in response_lens[i]]
    rows_r = [r for i in idx for r in response_lens[i]]
    fwd = training_forward_flops(fm, rows_p, rows_r)
    out = {"rollout": rollout_flops(fm, prompt_lens, response_lens), "reference": fwd if reference else 0,
           "old_log_probs": fwd if old_log_probs else 0, "update": 3 * fwd * epochs}
    out["total"] = sum(out.values())
    return out
