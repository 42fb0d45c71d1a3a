"""The LM head fused with the sampler (`generate_config.fused_sampler`): logits computed one vocabulary chunk
at a time and reduced to the sampler's per-row statistics while the chunk is still in cache.

Why: at decode shapes the LM head dominates the rollout (the Qwen2-shaped h256 model with the 151,936-entry
vocabulary: ~90% of the FLOPs). Unfused, every step writes the full [rows, vocab] fp32 logits (39 MB at 64
rows, far more than the caches), the softmax reads and writes them again and the block sums read them once
more. Here each chunk of `CHUNK` columns ([64, 8,192] fp32 = 2 MiB) is written, then reduced while it is
still in cache: its per-row max, its softmax (one kernel: max, exp-sum, normalise) and that softmax's sums
over each 1,024-column block of `sampling.inverse_cdf`. The chunk's softmax at its own max is 1 / s_c (s_c =
sum exp(z - m_c) over the chunk), so block b's mass relative to the row's global max M is

    S_b = sum_{j in b} exp(z_j - M) = blocksum(softmax_c)_b * s_c * exp(m_c - M)     (float64, [rows, ~150])

and `inverse_cdf`'s two levels run unchanged on them (`sampling.choose_block` / `choose_entry`): the block by
the row's uniform against the cumulative S_b, then the entry inside it from exp(z - M) of that block's 1,024
logits (kept in a chunk-major logits buffer, one copy while the chunk is hot). The token's log-prob is
z_t - M - log(sum_b S_b) (tempered logits z). Against the unfused sampler on the same logits and uniform the
only differences are fp rounding (S_b to ~1e-7 relative), so tokens differ only when a uniform falls within
~1e-7 of a block or entry boundary, and log-probs by ~1e-7 (tests/rollout/test_fused_head.py).

The properties of sampling.py hold: every op is row-wise over the vocabulary and the chunk boundaries depend
on the vocabulary only, so a row's token depends on its own (seed, row key, step) and hidden state only; the
vocabulary padding (columns >= vocab_size) is never computed, so never sampled; NaN logits still give an
in-range token (NaN log-prob). A chunk whose logits are all -inf contributes no mass. Temperature divides the
fp32 logits exactly as `sample` does. Greedy and top-k / top-p / min-p need the whole distribution: the
engine keeps the unfused path for them (and at TP > 1, see mindrl/rollout/builtin.py).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from mindrl.rollout.sampling import BLOCK, block_columns, block_sums, choose_block, choose_entry, row_uniforms

# Vocab columns per LM-head chunk: a multiple of BLOCK (blocks never straddle chunks); the packed LM head's piece
# size (packed_linear.OUT_CHUNK). 2,048 (a [64, 2,048] fp32 chunk fits a core's 1 MiB L2 here) measured no faster:
# per-chunk dispatch (~10 small ops) costs what the cache saves (docs/benchmarks.md).
CHUNK = 8 * BLOCK


class FusedHead:
    """The LM head `weight` [>= vocab_size, hidden] (+ `bias`) fused with temperature sampling.

    packer: a `mindrl.backends.packed_linear.LinearPacker` (each chunk's weight packed once, here) or None
    (`torch.mm` on the weight's rows). rows: the rows most calls will have (the packer's hint). The weight
    is read when the head is built (packed) or at every call (plain): build one per `generate` call."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, vocab_size: int, *, packer: Any = None,
                 rows: int = 1, chunk: int = CHUNK) -> None:
        if chunk % BLOCK:
            raise ValueError(f"FusedHead: chunk={chunk} must be a multiple of the sampler's block ({BLOCK})")
        if weight.dim() != 2 or weight.shape[0] < vocab_size:
            raise ValueError(f"FusedHead: weight {tuple(weight.shape)} has fewer rows than vocab_size={vocab_size}")
        self.vocab, self.chunk = vocab_size, chunk
        self.bounds = [(a, min(a + chunk, vocab_size)) for a in range(0, vocab_size, chunk)]
        w = weight.detach()
        b = None if bias is None else bias.detach()
        self.fns: list[Callable[[torch.Tensor, torch.Tensor], None]] = [
            self._packed(packer(w[a:e].contiguous(), rows), None if b is None else b[a:e]) if packer is not None
            else self._plain(w[a:e], None if b is None else b[a:e]) for a, e in self.bounds]
        self._z: torch.Tensor | None = None  # chunk-major tempered logits of the current call, reused
        self._p: torch.Tensor | None = None  # one chunk's softmax, reused (stays in cache)

    @staticmethod
    def _plain(w: torch.Tensor, b: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor], None]:
        def run(x: torch.Tensor, out: torch.Tensor) -> None:
            if x.dtype == out.dtype:
                torch.mm(x, w.t(), out=out)
            else:  # a bf16 / fp16 head: the sampler's logits are fp32, as `sample`'s `logits.float()`
                out.copy_(torch.mm(x, w.t()))
            if b is not None:
                out.add_(b)
        return run

    @staticmethod
    def _packed(fn: Callable[..., torch.Tensor],
                b: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor], None]:
        def run(x: torch.Tensor, out: torch.Tensor) -> None:
            out.copy_(fn(x, b))
        return run

    def sample(self, hidden: torch.Tensor, *, temperature: float, keys: torch.Tensor,
               steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens [rows] and their tempered log-probs [rows] (fp32) for the final hidden states [rows, hidden],
        drawn as `sampling.sample(logits, temperature=..., keys=..., steps=...)` draws them from the logits."""
        if temperature <= 0:
            raise ValueError("FusedHead.sample is for temperature > 0 (greedy takes the unfused path)")
        hidden = hidden.contiguous()
        rows, vocab = hidden.shape[0], self.vocab
        if self._z is None or self._z.numel() < rows * vocab:
            self._z = torch.empty(rows * vocab, dtype=torch.float32, device=hidden.device)
            self._p = torch.empty(rows * self.chunk, dtype=torch.float32, device=hidden.device)
        assert self._p is not None
        maxes, peaks, sums = [], [], []
        for (a, e), fn in zip(self.bounds, self.fns):
            z = self._z[rows * a:rows * e].view(rows, e - a)
            fn(hidden, z)
            if temperature != 1.0:
                z.div_(temperature)  # the same fp32 division as `sample`'s logits / temperature
            p = torch.ops.aten._softmax.out(z, -1, False, out=self._p[:rows * (e - a)].view(rows, e - a))
            maxes.append(z.amax(-1))
            peaks.append(p.amax(-1))  # softmax at the chunk's max: 1 / s_c
            sums.append(block_sums(p, BLOCK))
        m = torch.stack(maxes, dim=1)  # [rows, chunks]
        top = m.amax(-1)  # the row's max M
        # s_c * exp(m_c - M) per chunk; an all -inf chunk (m_c = -inf) has no mass (its softmax is NaN).
        scale = torch.exp(m.double() - top.double()[:, None]) / torch.stack(peaks, dim=1).double()
        scale = torch.where(m == float("-inf"), torch.zeros_like(scale), scale)
        per_chunk = [len(range(a, e, BLOCK)) for a, e in self.bounds]
        chunk_block_sums = torch.cat(sums, dim=1).double()
        scale = scale.repeat_interleave(torch.tensor(per_chunk, device=m.device), dim=1)
        masses = torch.where(scale == 0, torch.zeros_like(chunk_block_sums), chunk_block_sums * scale)
        choice = choose_block(masses, row_uniforms(keys, steps))
        cols = block_columns(choice[0], BLOCK, vocab).clamp_(max=vocab - 1)
        zb = self._z.gather(0, self._flat(cols, rows).flatten()).view(rows, BLOCK)
        inside = torch.exp(zb - top[:, None]).double()
        tokens = choose_entry(inside, block_columns(choice[0], BLOCK, vocab), choice, BLOCK, vocab)
        zt = self._z.gather(0, self._flat(tokens[:, None], rows)[:, 0])
        logps = (zt.double() - top.double() - choice[4].log()).float()
        return tokens, logps

    def _flat(self, cols: torch.Tensor, rows: int) -> torch.Tensor:
        """Flat indices into the chunk-major logits buffer of columns `cols` [rows, k] (each < vocab) of each row."""
        start = cols // self.chunk * self.chunk
        width = torch.clamp(self.vocab - start, max=self.chunk)
        r = torch.arange(rows, device=cols.device)[:, None]
        return rows * start + r * width + (cols - start)


__all__ = ["CHUNK", "FusedHead"]
