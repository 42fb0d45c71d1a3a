"""`FlashLikeAttention`: the planner's core attention for accelerator jobs, with a flash kernel's memory.

The devices' kernels (FlashAttention, TransformerEngine, the NPU's fused attention) keep the output
and a log-sum-exp per row, never the [s, s] score matrix, and share K/V heads over query groups
without copying them. torch's SDPA reaches its flash path on the CPU (and under fake tensors) only
when Q, K and V have one head size and K/V as many heads as Q; `mindrl.backends.attention.
SDPACoreAttention` repeats K/V heads for grouped-query attention and multi-latent attention has a V
head size below the QK one, which sends SDPA down its math path (scores materialised: for a 671B
layer at 3072 tokens, 1.3 GiB per micro-batch that no device holds). Here grouped K/V heads go to
SDPA's `enable_gqa` and a narrower V is zero-padded to the QK size and the output sliced, as MLA
kernels on devices do.

May import: torch, mindrl.backends.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from mindrl.backends.attention import SDPACoreAttention


class FlashLikeAttention(SDPACoreAttention):
    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        if attention_mask is not None or query.shape[0] != key.shape[0]:
            return super()._attend(query, key, value, attention_mask)
        sq, b = query.shape[0], query.shape[1]
        v_dim = value.shape[-1]
        if v_dim < query.shape[-1]:
            value = F.pad(value, (0, query.shape[-1] - v_dim))
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self._dropout(),
                                             scale=self.softmax_scale, enable_gqa=k.shape[1] != q.shape[1])
        return out[..., :v_dim].permute(2, 0, 1, 3).reshape(sq, b, -1)
