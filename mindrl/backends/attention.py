"""Core-attention modules for megatron-core's local spec, one per hardware kernel.

Each class has megatron's `core_attention` interface: constructed with
`(config, layer_number, attn_mask_type, attention_type, softmax_scale=..., k_channels=..., ...)`
and called as `(query, key, value, attention_mask, attn_mask_type=..., packed_seq_params=...)` on
`[s, b, heads, dim]` tensors, returning `[s_q, b, heads * v_dim]`.

Why our own instead of megatron's `DotProductAttention`: that one cannot take MLA's different
K and V head sizes (only TransformerEngine's can), and it materialises the full score matrix.
`SDPACoreAttention` runs everywhere (CPU included) and is the numerical reference for the others.

Packed sequences (megatron's `packed_seq_params`, `thd` layout): `SDPACoreAttention` attends within
each sequence (one causal call over the sequences laid out side by side); the flash-attn and NPU
classes fall back to it for packed input (flash-attn's varlen kernel would be the fast path there).

Masks follow megatron: `attention_mask` is boolean with True = *masked out*. With no mask the
attention is causal, aligned bottom-right (query i attends keys up to i + s_k - s_q), which is what
a KV-cached decode step needs.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule


class _CoreAttentionBase(MegatronModule):
    def __init__(
        self,
        config: Any,
        layer_number: int,
        attn_mask_type: Any,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        k_channels: Optional[int] = None,
        v_channels: Optional[int] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection: Any = None,
        **unused: Any,
    ) -> None:
        super().__init__(config=config)
        if getattr(config, "context_parallel_size", 1) > 1:
            raise NotImplementedError("context parallelism needs TransformerEngine attention")
        k_channels = k_channels or config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(k_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def _dropout(self) -> float:
        return self.dropout_p if self.training else 0.0


def causal_mask(sq: int, sk: int, device: torch.device) -> torch.Tensor:
    """Boolean [sq, sk], True = may attend; bottom-right aligned."""
    return torch.ones(sq, sk, dtype=torch.bool, device=device).tril(diagonal=sk - sq)


def cached_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of a few new queries against a longer KV cache (a decode step): [sq, b, heads, dim] q,
    [sk, b, kv_heads, dim] k / v -> [sq, b, heads * v_dim], causal aligned bottom-right.

    Two batched matmuls over the cache as megatron lays it out, each KV head shared by its query heads
    through a view (no copy of the cache). SDPA on CPU takes 10-30x longer here: with an explicit mask
    (needed when sq < sk) it leaves its fused kernel, and grouped-query heads were repeated in a copy
    of the whole cache, per layer and step."""
    sq, b, h, d = query.shape
    sk, _, hk, dv = value.shape
    rep = h // hk
    q = query.permute(1, 2, 0, 3).reshape(b, hk, rep * sq, d)  # query head i uses KV head i // rep
    scores = torch.matmul(q, key.permute(1, 2, 3, 0)).mul_(scale)  # [b, hk, rep * sq, sk]
    if sq > 1:
        hidden = ~causal_mask(sq, sk, query.device)
        scores = scores.view(b, hk, rep, sq, sk).masked_fill_(hidden, float("-inf")).view(b, hk, rep * sq, sk)
    out = torch.matmul(scores.softmax(dim=-1), value.permute(1, 2, 0, 3))  # [b, hk, rep * sq, dv]
    return out.view(b, hk, rep, sq, dv).permute(3, 0, 1, 2, 4).reshape(sq, b, h * dv)


class SDPACoreAttention(_CoreAttentionBase):
    """torch.nn.functional.scaled_dot_product_attention: CPU, and the fallback on any device."""

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Any = None,
        attention_bias: Any = None,
        packed_seq_params: Any = None,
        **unused: Any,
    ) -> torch.Tensor:
        if packed_seq_params is not None:
            return self._packed(query, key, value, packed_seq_params)
        return self._attend(query, key, value, attention_mask)

    def _packed(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, params: Any) -> torch.Tensor:
        """megatron's packed `thd` layout: [t, heads, dim] tensors holding sequences back to back,
        bounded by `cu_seqlens`; causal attention within each sequence, none across. Returns
        [t, heads * v_dim]. The sequences are laid out right-padded as [longest, n, heads, dim] for
        one causal SDPA call (a padded key lies after every real query of its row, so the causal
        mask already hides it): attention pays for the padding, the rest of the layer does not.
        One gather and one scatter, where per-sequence slices would cost a full-size gradient each."""
        if params.qkv_format != "thd":
            raise NotImplementedError(f"packed sequences in {params.qkv_format!r} layout (only 'thd')")
        cu_q = params.cu_seqlens_q_padded if params.cu_seqlens_q_padded is not None else params.cu_seqlens_q
        cu_kv = params.cu_seqlens_kv_padded if params.cu_seqlens_kv_padded is not None else params.cu_seqlens_kv
        if not torch.equal(cu_q.cpu(), cu_kv.cpu()) or int(cu_q[-1]) != query.shape[0] or key.shape[0] != query.shape[0]:
            raise ValueError(f"packed self-attention needs equal q/kv sequence bounds ending at the {query.shape[0]} "
                             f"packed tokens, got cu_seqlens_q={cu_q.tolist()} cu_seqlens_kv={cu_kv.tolist()}")
        starts, lengths = cu_q[:-1].long().to(query.device), (cu_q[1:] - cu_q[:-1]).long().to(query.device)
        steps = torch.arange(int(lengths.max()), device=query.device)
        index = (starts[None, :] + steps[:, None]).clamp(max=query.shape[0] - 1)  # [longest, n]
        valid = steps[:, None] < lengths[None, :]
        out = self._attend(query[index], key[index], value[index], None)  # [longest, n, heads * v_dim]
        return out.transpose(0, 1)[valid.t()]  # row by row, position by position: the packed order

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """[s, b, heads, dim] -> [s_q, b, heads * v_dim]."""
        sq, b = query.shape[0], query.shape[1]
        sk = key.shape[0]
        if attention_mask is None and sq < sk and not self._dropout():
            return cached_attention(query, key, value, self.softmax_scale)
        # megatron [s, b, h, d] -> SDPA [b, h, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        if k.shape[1] != q.shape[1]:  # grouped-query attention: share each KV head
            rep = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if attention_mask is not None:
            mask = ~attention_mask.bool()
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self._dropout(),
                                                 scale=self.softmax_scale)
        elif sq == sk:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self._dropout(),
                                                 scale=self.softmax_scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(sq, sk, q.device),
                                                 dropout_p=self._dropout(), scale=self.softmax_scale)
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)


class FlashAttnCoreAttention(SDPACoreAttention):
    """flash-attn 2 (`flash_attn_func`) on CUDA. Not verified on hardware (see docs/hardware.md).

    Falls back to SDPA for explicit masks and for K/V head sizes flash-attn cannot take.
    """

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,  # noqa: ANN001
                packed_seq_params=None, **unused: Any) -> torch.Tensor:
        if attention_mask is not None or packed_seq_params is not None or key.shape[-1] != value.shape[-1]:
            return super().forward(query, key, value, attention_mask, packed_seq_params=packed_seq_params)
        from flash_attn import flash_attn_func  # imported lazily: only present on CUDA installs

        sq, b = query.shape[0], query.shape[1]
        q, k, v = (t.transpose(0, 1) for t in (query, key, value))  # [b, s, h, d]
        # flash-attn's causal mask is bottom-right aligned, as ours is.
        out = flash_attn_func(q, k, v, dropout_p=self._dropout(), softmax_scale=self.softmax_scale, causal=True)
        return out.transpose(0, 1).reshape(sq, b, -1)


class NpuFusionCoreAttention(SDPACoreAttention):
    """`torch_npu.npu_fusion_attention` on Ascend. Not verified on hardware (see docs/hardware.md).

    Uses the BNSD layout and `sparse_mode=3` (right-down causal) with the compressed 2048x2048
    mask the kernel expects, as MindSpeed does.
    """

    _mask_cache: dict[torch.device, torch.Tensor] = {}

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,  # noqa: ANN001
                packed_seq_params=None, **unused: Any) -> torch.Tensor:
        if attention_mask is not None or packed_seq_params is not None:
            return super().forward(query, key, value, attention_mask, packed_seq_params=packed_seq_params)
        import torch_npu  # noqa: F401 - lazily, only on Ascend installs

        sq, b = query.shape[0], query.shape[1]
        q, k, v = (t.permute(1, 2, 0, 3).contiguous() for t in (query, key, value))
        if k.shape[1] != q.shape[1]:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        mask = self._mask_cache.get(q.device)
        if mask is None:
            mask = torch.ones(2048, 2048, dtype=torch.bool, device=q.device).triu(diagonal=1)
            self._mask_cache[q.device] = mask
        out = torch_npu.npu_fusion_attention(
            q, k, v, q.shape[1], "BNSD", atten_mask=mask, scale=self.softmax_scale,
            keep_prob=1.0 - self._dropout(), sparse_mode=3,
        )[0]
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)
