"""Token sampling: temperature, top-k, top-p, min-p, and counter-based randomness.

Reproducibility. A sample's random number comes from a hash of (seed, row key, step) (splitmix64 in
int64 tensor ops), not from a stateful generator. So a sample depends only on its own key —
(prompt index, sample index) — its step and the model's logits, never on which other prompts share
the batch, how the batch is split, which rows finished early (integer ops are exact everywhere).
TP ranks see identical gathered logits and draw the same number, so they pick the same token
without any communication.

Drawing: one uniform per row and step, and inverse-CDF selection over the (filtered) softmax
(`inverse_cdf`). An earlier version raced one hashed uniform per (row, vocabulary entry) — 64 x 151k
int64 hash chains per decode step, which cost more than the model's forward; this costs one softmax
pass plus a block reduction. Only row-wise kernels touch the vocabulary dimension, so a row's token
is the same whichever rows share its batch.
"""
from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """A 64-bit unsigned constant as the int64 torch stores (two's complement)."""
    x &= _MASK64
    return x - (1 << 64) if x >= (1 << 63) else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
BLOCK = 1024  # inverse-CDF block: vocab entries per first-level bucket


def _srl(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift on int64 (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's output function on int64 tensors (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ _srl(z, 30)) * _MIX1
    z = (z ^ _srl(z, 27)) * _MIX2
    return z ^ _srl(z, 31)


def splitmix64_py(z: int) -> int:
    """Reference implementation on Python ints (for tests)."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def row_keys(seed: int, prompt_index: torch.Tensor, sample_index: torch.Tensor) -> torch.Tensor:
    """One int64 key per row from (seed, prompt index, sample index)."""
    base = splitmix64(torch.tensor(_signed(seed), dtype=torch.int64))
    return splitmix64(splitmix64(base ^ prompt_index.long()) ^ sample_index.long())


def row_uniforms(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One float64 uniform in (0, 1) per row, a pure function of (row key, step): 53 hash bits."""
    bits = _srl(splitmix64(splitmix64(keys.long() ^ splitmix64(steps.long()))), 11)  # top 53 bits
    return (bits.double() + 0.5) * (1.0 / (1 << 53))


def filter_logits(logits: torch.Tensor, top_k: int = -1, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """Set the logits of tokens the filters remove to -inf (out of place). Order: top-k, then top-p
    on the top-k-renormalised distribution (as vLLM and HF do), then min-p (p < min_p * p_max;
    unaffected by renormalisation). Ties at the top-k boundary are all kept."""
    out = logits
    if top_k is not None and 0 < top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        probs = torch.softmax(out, dim=-1)
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass of strictly more likely tokens
        drop_sorted = mass_before >= top_p  # the most likely token always survives (mass_before = 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    if min_p > 0.0:
        probs = torch.softmax(out, dim=-1)
        out = out.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))
    return out


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Index i with probability weights[r, i] / sum(weights[r]) for each row r, given u[r] in (0, 1).

    Two levels, so no full-vocabulary cumulative sum: the row's mass is split into blocks of `block`
    entries (fp32 block sums, one cheap reduction), the block is chosen by `u` against the float64
    cumulative block sums, then the entry inside it by the rescaled remainder against that block's
    float64 cumulative sum. Block b is chosen with probability S_b / sum(S) and entry j inside it with
    w_j / sum(block), so token j's probability is w_j / total up to the fp32 rounding of S_b (a
    relative 1e-7, spread over the block, never piled on one token). Every op is row-wise, so a row's
    choice does not depend on the other rows in the batch. Zero-weight entries are never chosen.
    """
    rows, vocab = weights.shape
    block = min(block, vocab)
    choice = choose_block(block_sums(weights, block), u)
    cols = block_columns(choice[0], block, vocab)
    inside = weights.gather(1, cols.clamp(max=vocab - 1)).double()
    return choose_entry(inside, cols, choice, block, vocab)


def block_sums(weights: torch.Tensor, block: int) -> torch.Tensor:
    """Sums of `weights` [rows, n] over consecutive blocks of `block` columns (the last one may be shorter):
    [rows, ceil(n / block)], in the weights' dtype."""
    n = weights.shape[1]
    full = n // block * block
    sums = []
    if full:
        sums.append(weights[:, :full].unflatten(-1, (full // block, block)).sum(-1))
    if full < n:
        sums.append(weights[:, full:].sum(-1, keepdim=True))
    return torch.cat(sums, dim=-1)


def choose_block(sums: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """inverse_cdf's first level: the block [rows] chosen by `u` against the float64 cumulative `sums`
    [rows, blocks] (any common scale per row), with what the second level needs: (block, target, mass
    before the block, the block's mass, the row's total mass)."""
    cum = torch.cumsum(sums.double(), dim=-1)  # [rows, blocks], tiny
    target = u.double() * cum[:, -1]
    b = torch.searchsorted(cum, target[:, None], right=True)[:, 0].clamp_(max=cum.shape[1] - 1)
    before = torch.where(b > 0, cum.gather(1, (b - 1).clamp(min=0)[:, None])[:, 0], torch.zeros_like(target))
    mass = cum.gather(1, b[:, None])[:, 0] - before
    return b, target, before, mass, cum[:, -1]


def block_columns(b: torch.Tensor, block: int, vocab: int) -> torch.Tensor:
    """The vocabulary columns [rows, block] of each row's block `b` (the tail block's overhang >= vocab)."""
    return b[:, None] * block + torch.arange(block, device=b.device)[None, :]


def choose_entry(inside: torch.Tensor, cols: torch.Tensor, choice: tuple[torch.Tensor, ...], block: int,
                 vocab: int) -> torch.Tensor:
    """inverse_cdf's second level: the token inside the chosen block, from the block's float64 weights `inside`
    [rows, block] (any scale per row) at `cols` (block_columns) and `choice` (choose_block)."""
    b, target, before, mass, _ = choice
    inside = inside.masked_fill(cols >= vocab, 0.0)  # the tail block's overhang
    within = torch.cumsum(inside, dim=-1)
    rest = ((target - before) / mass).clamp_(0.0, 1.0) * within[:, -1]
    j = torch.searchsorted(within, rest[:, None], right=True)
    last = torch.searchsorted(within, within[:, -1:].contiguous(), right=False)  # the block's last non-zero entry
    # Clamped: NaN logits (a diverged model) must still give an in-range token; the trainer then
    # sees the non-finite log-prob and skips the step.
    return (b * block + torch.minimum(j, last)[:, 0]).clamp_(max=vocab - 1).long()


def sample(logits: torch.Tensor, *, temperature: float, top_k: int = -1, top_p: float = 1.0, min_p: float = 0.0,
           keys: torch.Tensor | None = None, steps: torch.Tensor | None = None,
           probs_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [rows] and their log-probs [rows] (fp32) from logits [rows, vocab].

    `logits` must already have non-tokens (TP vocab padding) at -inf. The log-prob is
    `log_softmax(logits / temperature)` of the chosen token *before* filtering (temperature 1 when
    greedy), which is what the trainer recomputes; see mindrl/rollout/base.py.
    `probs_out`: an fp32 [rows, vocab] buffer for the softmax, reused across decode steps (the same
    kernel, so the same values; it saves page-faulting a fresh vocab-sized tensor every step).
    """
    logits = logits.float()
    if temperature == 0:
        tokens = torch.argmax(logits, dim=-1)
        return tokens, torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0]
    if keys is None or steps is None:
        raise ValueError("sampling with temperature > 0 needs row keys and steps")
    scaled = logits / temperature if temperature != 1.0 else logits
    # row-wise kernel: a row's values never depend on other rows
    probs = (torch.softmax(scaled, dim=-1) if probs_out is None
             else torch.ops.aten._softmax.out(scaled, -1, False, out=probs_out))
    weights = probs
    if (top_k is not None and 0 < top_k < logits.shape[-1]) or top_p < 1.0 or min_p > 0.0:
        weights = probs.masked_fill(torch.isinf(filter_logits(scaled, top_k, top_p, min_p)), 0.0)
    tokens = inverse_cdf(weights, row_uniforms(keys, steps))
    # log p of the unfiltered tempered distribution; a sampled token's p is far from fp32 underflow.
    return tokens, probs.gather(-1, tokens[:, None])[:, 0].log()
