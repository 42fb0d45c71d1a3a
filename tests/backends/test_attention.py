"""The SDPA core attention against a plain softmax(QK^T)V written out by hand."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mindrl.backends.attention import SDPACoreAttention, causal_mask


def config(kv_channels=8):
    return SimpleNamespace(kv_channels=kv_channels, attention_dropout=0.0, context_parallel_size=1,
                           tensor_model_parallel_size=1, pipeline_model_parallel_size=1, sequence_parallel=False)


def reference(q, k, v, scale, allowed):
    """q [sq,b,h,d], k/v [sk,b,hk,d]; allowed [sq,sk] bool. Loops over heads, no SDPA."""
    sq, b, h, _ = q.shape
    rep = h // k.shape[2]
    out = torch.zeros(sq, b, h, v.shape[-1])
    for bi in range(b):
        for hi in range(h):
            scores = q[:, bi, hi] @ k[:, bi, hi // rep].T * scale
            scores = scores.masked_fill(~allowed, float("-inf"))
            out[:, bi, hi] = scores.softmax(-1) @ v[:, bi, hi // rep]
    return out.reshape(sq, b, -1)


@pytest.fixture
def attn():
    def make(kv_channels=8, **kw):
        return SDPACoreAttention(config(kv_channels), layer_number=1, attn_mask_type=None,
                                 attention_type="self", **kw).eval()
    return make


def test_causal_gqa_matches_reference(attn):
    torch.manual_seed(0)
    q, k, v = torch.randn(5, 2, 4, 8), torch.randn(5, 2, 2, 8), torch.randn(5, 2, 2, 8)
    got = attn()(q, k, v, None)
    want = reference(q, k, v, 1 / math.sqrt(8), causal_mask(5, 5, q.device))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_decode_step_is_bottom_right_aligned(attn):
    """One new query against a 6-token KV cache attends to all 6 (not just the first)."""
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 1, 2, 8), torch.randn(6, 1, 2, 8), torch.randn(6, 1, 2, 8)
    got = attn()(q, k, v, None)
    want = reference(q, k, v, 1 / math.sqrt(8), torch.ones(1, 6, dtype=torch.bool))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sq", [1, 3])
def test_decode_against_a_cache_gqa_and_mla_sizes(attn, sq):
    """A few queries against a longer cache (the rollout's decode path, `cached_attention`): grouped-query
    heads (3 per KV head), K and V head sizes that differ, causal bottom-right."""
    torch.manual_seed(4)
    q, k, v = torch.randn(sq, 2, 6, 12), torch.randn(7, 2, 2, 12), torch.randn(7, 2, 2, 8)
    got = attn(k_channels=12, v_channels=8, softmax_scale=0.3)(q, k, v, None)
    want = reference(q, k, v, 0.3, causal_mask(sq, 7, q.device))
    assert got.shape == (sq, 2, 6 * 8)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_explicit_mask_true_means_masked(attn):
    torch.manual_seed(2)
    q, k, v = torch.randn(4, 1, 2, 8), torch.randn(4, 1, 2, 8), torch.randn(4, 1, 2, 8)
    masked = torch.zeros(4, 4, dtype=torch.bool)
    masked[:, 0] = True  # nobody may look at token 0 ...
    masked[0, 0] = False  # ... except token 0 itself
    got = attn()(q, k, v, masked.view(1, 1, 4, 4))
    want = reference(q, k, v, 1 / math.sqrt(8), ~masked)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_mla_head_sizes_and_scale(attn):
    """MLA: K has 12 dims (nope+rope), V has 8; softmax_scale is given explicitly."""
    torch.manual_seed(3)
    q, k, v = torch.randn(3, 1, 2, 12), torch.randn(3, 1, 2, 12), torch.randn(3, 1, 2, 8)
    got = attn(k_channels=12, v_channels=8, softmax_scale=0.3)(q, k, v, None)
    want = reference(q, k, v, 0.3, causal_mask(3, 3, q.device))
    assert got.shape == (3, 1, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
