"""The LM head fused with the sampler (mindrl/rollout/fused_head.py) against the unfused sampler
(`sampling.sample` on the full logits, same uniforms), against float64 log-softmax, and against softmax
frequencies (chi-square, as test_sampling.py). The engine-level checks (same tokens as the unfused engine,
log-probs vs the training forward) are in test_packed_linear.py."""
from __future__ import annotations

import pytest
import torch

from mindrl.backends.packed_linear import onednn_pack, onednn_supports
from mindrl.rollout.fused_head import FusedHead
from mindrl.rollout.sampling import row_keys, sample
from tests.rollout.test_sampling import chi_square_p

VOCAB, PADDED, HIDDEN = 151936, 152064, 32
PACKERS = [None] + ([onednn_pack] if onednn_supports(torch.float32) else [])


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: dozens of small per-chunk kernels, which two OpenMP threads on a loaded machine slow 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _keys(rows: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return row_keys(seed, torch.arange(rows), torch.zeros(rows, dtype=torch.long)), torch.arange(rows) % 7


@pytest.fixture(scope="module")
def head_weights() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(PADDED, HIDDEN, generator=g) * 0.4, torch.randn(48, HIDDEN, generator=g)


@pytest.mark.parametrize("packer", PACKERS, ids=lambda p: "plain" if p is None else "packed")
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_equals_unfused_sampler(head_weights, packer, temperature):
    """Real vocabulary (74 chunks, a partial tail chunk and block), padding rows in the weight: the same
    tokens as `sample` on the full logits with the same keys and steps (they may differ only when a uniform
    falls within fp rounding of a boundary: not in these 48 rows), log-probs within 1e-6 of float64
    log-softmax of the same tempered fp32 logits; the unfused fp32 softmax itself is ~1e-5 off it at this
    vocabulary (fp32 sums over 151,936 entries), hence the looser bound between the two."""
    weight, hidden = head_weights
    keys, steps = _keys(len(hidden))
    tokens, logps = FusedHead(weight, None, VOCAB, packer=packer, rows=len(hidden)).sample(
        hidden, temperature=temperature, keys=keys, steps=steps)
    logits = (hidden @ weight[:VOCAB].t() if packer is None else packer(weight[:VOCAB].contiguous(), 48)(hidden))
    ref_t, ref_lp = sample(logits, temperature=temperature, keys=keys, steps=steps)
    assert torch.equal(tokens, ref_t)
    exact = torch.log_softmax(logits.double() / temperature, -1).gather(1, tokens[:, None])[:, 0]
    assert (logps.double() - exact).abs().max() <= 2e-6
    assert (logps - ref_lp).abs().max() <= 1e-4
    assert len(set(tokens.tolist())) > 40


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_fused_matches_softmax_chi_square(temperature):
    """10,000 draws over a 2,600-entry vocabulary in 1,024-column chunks (3 chunks, a partial tail), mass on 12
    tokens at chunk and block edges, against softmax(logits / T): chi-square; log-probs against log-softmax."""
    vocab, rows = 2600, 10000
    logits = torch.full((vocab,), -40.0)
    where = torch.tensor([0, 5, 1023, 1024, 1500, 2047, 2048, 2049, 2300, 2500, 2598, 2599])
    logits[where] = torch.randn(12, generator=torch.Generator().manual_seed(1)) * 1.5
    head = FusedHead(logits[:, None], None, vocab, rows=rows, chunk=1024)  # hidden 1: z = logits exactly
    keys, steps = _keys(rows, seed=21)
    tokens, logps = head.sample(torch.ones(rows, 1), temperature=temperature, keys=keys, steps=steps)
    probs = torch.softmax(logits.double() / temperature, -1)
    assert set(tokens.tolist()) <= set(where.tolist())
    assert chi_square_p(tokens, probs.where(probs > 1e-12, torch.zeros_like(probs))) > 1e-3
    assert torch.allclose(logps.double(), torch.log(probs)[tokens], atol=1e-6)


@pytest.mark.parametrize("packer", PACKERS, ids=lambda p: "plain" if p is None else "packed")
def test_fused_samples_do_not_depend_on_the_batch(packer):
    """A row's token and log-prob, bit for bit, alone, permuted, or in a bigger batch with other rows. Hidden size
    1, so every logit is one exact product whatever kernel the row count picks (a K > 1 matmul may round
    differently at another row count, fused or not: that is the matmul's, not the sampler's)."""
    g = torch.Generator().manual_seed(5)
    weight, hidden = torch.randn(PADDED, 1, generator=g) * 3, torch.randn(64, 1, generator=g)
    keys, steps = _keys(6)
    x = hidden[:6]
    head = FusedHead(weight, None, VOCAB, packer=packer, rows=64)
    tokens, logps = head.sample(x, temperature=0.9, keys=keys, steps=steps)
    for r in range(6):
        t, lp = head.sample(x[r:r + 1], temperature=0.9, keys=keys[r:r + 1], steps=steps[r:r + 1])
        assert (t.item(), lp.item()) == (tokens[r].item(), logps[r].item()), r
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    other_keys, other_steps = _keys(58, seed=1)
    big_t, big_lp = head.sample(torch.cat([x[perm], hidden[6:64]]), temperature=0.9,
                                keys=torch.cat([keys[perm], other_keys]), steps=torch.cat([steps[perm], other_steps]))
    assert torch.equal(big_t[:6], tokens[perm]) and torch.equal(big_lp[:6], logps[perm])


def test_padding_minus_inf_and_nan():
    """Weight rows past vocab_size (padding, here with huge logits) are never sampled; a chunk at -inf (bias) has
    no mass; NaN hidden states still give in-range tokens with NaN log-probs."""
    vocab, rows = 2500, 4000
    weight = torch.zeros(3072, 1)
    weight[vocab:] = 100.0  # padding: would win every draw if it were computed
    bias = torch.zeros(3072)
    bias[:1024] = float("-inf")  # the whole first chunk
    head = FusedHead(weight, bias, vocab, rows=rows, chunk=1024)
    keys, steps = _keys(rows)
    tokens, logps = head.sample(torch.ones(rows, 1), temperature=2.0, keys=keys, steps=steps)
    assert tokens.min() >= 1024 and tokens.max() < vocab
    assert torch.allclose(logps, torch.full_like(logps, -torch.log(torch.tensor(vocab - 1024.0)).item()), atol=1e-6)
    hidden = torch.ones(3, 1)
    hidden[1] = float("nan")
    tokens, logps = head.sample(hidden, temperature=1.0, keys=keys[:3], steps=steps[:3])
    assert ((tokens >= 0) & (tokens < vocab)).all() and torch.isnan(logps[1]) and torch.isfinite(logps[[0, 2]]).all()
    with pytest.raises(ValueError, match="temperature > 0"):
        head.sample(hidden, temperature=0.0, keys=keys[:3], steps=steps[:3])
    with pytest.raises(ValueError, match="multiple"):
        FusedHead(weight, None, vocab, chunk=1000)
