"""Token sampling: temperature, top-k, top-p, min-p, and counter-based noise.

Reproducibility. A sample's random numbers come from a hash of (seed, row key, step, token id)
(splitmix64 in int64 tensor ops), not from a stateful generator. So a sample depends only on its
own key — (prompt index, sample index) — and the model's logits, never on which other prompts share
the batch, how the batch is split, which rows finished early, or the device (integer ops are
exact everywhere). TP ranks see identical gathered logits and draw identical noise, so they pick
the same token without any communication.

Drawing: the exponential race (Gumbel-max), `argmax_i(log p_i - log E_i)` with `E_i = -log u_i`,
picks token i with probability p_i — one vectorised pass, no per-row generator.
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


def uniform_noise(keys: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, vocab] uniforms in (0, 1), a pure function of (row key, step, token id)."""
    rows = splitmix64(keys.long() ^ splitmix64(steps.long()))
    tokens = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    bits = _srl(splitmix64(rows[:, None] ^ splitmix64(tokens)[None, :]), 40)  # top 24 bits: exact in fp32
    return (bits.float() + 0.5) * (1.0 / (1 << 24))


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


def sample(logits: torch.Tensor, *, temperature: float, top_k: int = -1, top_p: float = 1.0, min_p: float = 0.0,
           keys: torch.Tensor | None = None, steps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [rows] and their log-probs [rows] (fp32) from logits [rows, vocab].

    `logits` must already have non-tokens (TP vocab padding) at -inf. The log-prob is
    `log_softmax(logits / temperature)` of the chosen token *before* filtering (temperature 1 when
    greedy), which is what the trainer recomputes; see mindrl/rollout/base.py.
    """
    logits = logits.float()
    scaled = logits / temperature if temperature > 0 else logits
    logp = torch.log_softmax(scaled, dim=-1)
    if temperature == 0:
        tokens = torch.argmax(logits, dim=-1)
    else:
        if keys is None or steps is None:
            raise ValueError("sampling with temperature > 0 needs row keys and steps")
        kept = filter_logits(scaled, top_k, top_p, min_p)
        # argmax(log p_i - log E_i); log p_i = kept_i - logsumexp(kept) and the constant drops out.
        race = kept - torch.log(-torch.log(uniform_noise(keys, steps, logits.shape[-1])))
        tokens = torch.argmax(race, dim=-1)
    return tokens, logp.gather(-1, tokens[:, None])[:, 0]
