"""The update's output layer with its gradient computed in the forward (`actor_config.head_grad_in_forward`).

mindrl.models.logprobs fuses the output layer with the log-softmax so that no `[tokens, vocab]` logits tensor
ever exists: its forward keeps per-token statistics only and its backward recomputes every logits tile. That
is four matmuls of `tokens x hidden x vocab` for the three the model FLOPs count (forward, input gradient,
weight gradient), and at hidden 256 x 151,936 vocab the output layer is three quarters of the update's FLOPs
(docs/benchmarks.md, issue 21).

Here the loss comes into the output layer instead, as Liger-Kernel's fused linear cross-entropy does: rows of
tokens are taken a block at a time over this rank's whole vocab slice (`rows x vocab/TP` logits, within the
planner's allowance for the log-probs' temporaries: `block_rows`); for each block the logits are computed once
(eager: tile by tile of CHUNK_COLUMNS vocab entries, each tile's statistics taken while it is fresh in the cache
and merged by the online log-sum-exp, `_online_statistics`; compiled tiles: the block at once), their
log-normaliser and entropy combined (TP: one MAX and one SUM all-reduce), the loss's gradient with respect to the
block's log-probs (and entropies) evaluated, and each tile of logits turned in place into its gradient, which
gives the block's hidden-state gradient and that vocab slice's share of the weight gradient right away. Three
matmuls; the gradients wait for the backward, which scales them by the loss's upstream gradient.

Why that is exact: the loss's gradient at a token is evaluated before the later blocks' log-probs exist, with
zeros standing in for them. For a loss that is a sum of per-token terms (the clipped surrogate, CISPO, the KL
and entropy terms under every loss_agg_mode, with their normaliser fixed beforehand) a token's gradient does
not depend on the other tokens' values, so it is the gradient at the real ones. That is checked, not assumed:
the last block's evaluation has every real value, and unless its gradient equals the per-block ones bit for
bit (e.g. GSPO's sequence-level ratio), the gradients are recomputed from the true ones by the recompute path
(`recompute_grads`), as exact as before. Every evaluation is compared so: from the first block whose earlier
gradients differ, no more per-block gradient work is done (the recompute then costs about what `false` does). `_FusedLinearLoss.separable` says which ran.

May import: torch, megatron.core (parallel state), mindrl.models.logprobs / logprob_tiles.
"""
from __future__ import annotations

from typing import Callable

import torch

from mindrl.models.logprobs import (CHUNK_COLUMNS, CHUNK_ELEMENTS, _chunk_grad, _matmul_input, _online_statistics,
                                    _Scratch, _tp, _valid_columns, add_tile_grads, combine_ranks, recompute_grads,
                                    selected_rows, unselect)

# (log-probs [n], entropies [n]) of the selected tokens -> the scalar loss
FlatLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def block_rows(n: int, local: int, chunk_elements: int | None) -> int:
    """Tokens per block: its logits (`rows x local` fp32, the gradient written in place) within 2 x
    `chunk_elements` (CHUNK_ELEMENTS) values (and, eager, one `rows x CHUNK_COLUMNS` tile of exponentials),
    inside the three chunks the planner allows the log-probs (plan.ranks.logprob_chunk_bytes). Measured at
    hidden 256 x 151,936 (docs/benchmarks.md, issue 21): the logits matmul runs well from ~200 rows, and bigger
    blocks raised the update's peak RSS. From `local`, the padded vocab slice, equal on every TP rank: every
    rank runs the same blocks and all-reduces."""
    return max(1, min(n, 2 * (chunk_elements or CHUNK_ELEMENTS) // max(local, 1)))


def _loss_grads(loss_of: FlatLoss, logp: torch.Tensor, entropy: torch.Tensor, entropy_grad: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss, d loss / d logp, d loss / d entropy or None) at these values (zeros where unused)."""
    lp = logp.detach().clone().requires_grad_()
    ent = entropy.detach().clone().requires_grad_(entropy_grad)
    with torch.enable_grad():
        loss = loss_of(lp, ent)
        wrt = [lp, ent] if entropy_grad else [lp]
        grads = (torch.autograd.grad(loss, wrt, allow_unused=True) if loss.requires_grad else [None] * len(wrt))
    grads = [torch.zeros_like(x) if g is None else g.float() for x, g in zip(wrt, grads)]
    return loss.detach(), grads[0], grads[1] if entropy_grad else None


class _FusedLinearLoss(torch.autograd.Function):
    """(loss, log p(label), entropy) of softmax((hidden @ weight.T) * inv_temp) over the real vocab, with
    loss = loss_of(log-probs, entropies); differentiable in the loss only (log-probs and entropies are
    returned for metrics). `hidden` [n, h], `weight` [vocab/TP, h] as in `_FusedLinearLogProbEntropy`; the
    returned hidden gradient is this rank's partial sum (the caller's TP region reduces it)."""

    separable: bool | None = None  # the last call's: were the per-block gradients exact (else: recomputed)

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                inv_temp: float, chunk_elements: int | None, chunk_columns: int | None, compiled: bool,
                loss_of: FlatLoss, entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        local, n = weight.shape[0], hidden.shape[0]
        n_valid = _valid_columns(local, vocab_size)
        w = weight[:n_valid]  # padded vocab rows are not tokens: never computed
        rank, _, group = _tp()
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # zeros: the stand-ins for the tokens of later blocks when a block's loss gradient is evaluated
        logp = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        entropy, lse, g_lp = torch.zeros_like(logp), torch.zeros_like(logp), torch.zeros_like(logp)
        g_h = torch.zeros_like(logp) if entropy_grad else None
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if want_h else None
        grad_w = torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        if grad_w is not None:  # the first block writes every real row; padded rows (all, without tokens) are 0
            grad_w[n_valid if n else 0:].zero_()
        rows = block_rows(n, local, chunk_elements)
        # Eager: tiles of CHUNK_COLUMNS, whose several elementwise passes then run in the cache. Compiled: the
        # kernels make one or two streaming passes anyway, so a block is one tile (a tile per call measured
        # slower: the calls' overhead and narrower matmuls; docs/benchmarks.md, issue 21).
        cols = max(1, min(chunk_columns or (n_valid if compiled else CHUNK_COLUMNS), n_valid))
        busy = bool(n and n_valid)
        # The block's logits, tile after tile, each tile [rows, cols] contiguous; and one tile of exponentials
        # (eager only: the compiled kernels write nothing but their results).
        block = torch.empty(min(rows, n) * n_valid, dtype=torch.float32, device=hidden.device) if busy else None
        exps = _Scratch(min(rows, n) * cols, hidden.device, 1) if busy and not compiled else None
        h_mm = _matmul_input(hidden, w, inv_temp)
        h_w = hidden.to(w.dtype).float() if want_w else None  # the weight gradient's matmul input, fp32
        local_lab = labels - rank * local
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        full_lp, full_h = g_lp, g_h
        separable = True  # so far: every evaluation's gradient at the earlier blocks' tokens is the one used
        for s in range(0, n, rows):
            e = min(n, s + rows)
            r, lab = e - s, local_lab[s:e]
            inside = (lab >= 0) & (lab < n_valid)
            tile = lambda c0, c1: block[r * c0:r * c1].view(r, c1 - c0)  # noqa: E731  (kept for the gradient)
            m, big_s, big_t, picked, shifts = _online_statistics(h_mm[s:e], w, lab, inv_temp, cols, tile,
                                                                 lambda width: exps(0, r, width), compiled)
            tiles = [(c0, min(n_valid, c0 + cols)) for c0 in range(0, n_valid if busy else 0, cols)]
            views = [tile(c0, c1) for c0, c1 in tiles]
            logp[s:e], entropy[s:e], lse[s:e] = combine_ranks(m, big_s, big_t, picked, inside, n_valid, group)
            # The loss's gradient at this block's tokens (later blocks' tokens still 0: see the docstring).
            loss, full_lp, full_h = _loss_grads(loss_of, logp, entropy, entropy_grad)
            # It sees the earlier blocks' real values: where their gradients differ from the ones used, the loss is
            # not token-separable and the rest is left to the recompute below (no more per-block gradient work).
            separable = separable and torch.equal(full_lp[:s], g_lp[:s]) and (
                g_h is None or torch.equal(full_h[:s], g_h[:s]))
            g_lp[s:e] = full_lp[s:e]
            if g_h is not None:
                g_h[s:e] = full_h[s:e]
            for (c0, c1), z, shift in zip(tiles, views, shifts) if separable and (want_h or want_w) else ():
                gz = _chunk_grad(z, lse[s:e] - shift, entropy[s:e], g_lp[s:e], None if g_h is None else g_h[s:e],
                                 lab - c0, c1 - c0, inv_temp,
                                 None if compiled or g_h is None else exps(0, r, c1 - c0), compiled)
                add_tile_grads(gz, w[c0:c1], None if grad_h is None else grad_h[s:e],
                               None if grad_w is None else grad_w[c0:c1], None if h_w is None else h_w[s:e],
                               first=s == 0)
                del z, gz
        block = exps = None  # freed before a recompute
        # The last evaluation saw every real value: the per-block gradients were checked against it above.
        if not separable and (want_h or want_w):
            grad_h, grad_w = recompute_grads(hidden, weight, labels, lse, entropy, full_lp, full_h, vocab_size,
                                             inv_temp, chunk_elements, None, compiled, want_h, want_w)
        _FusedLinearLoss.separable = separable
        ctx.grads = (grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(logp, entropy)
        return loss, logp, entropy

    @staticmethod
    def backward(ctx, g_loss: torch.Tensor, _g_logp: torch.Tensor | None, _g_entropy: torch.Tensor | None):
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        if float(g_loss) != 1.0:  # megatron's 1/micro-batches, data-parallel scaling: usually exactly 1
            grad_h = None if grad_h is None else grad_h.mul_(g_loss)
            grad_w = None if grad_w is None else grad_w.mul_(g_loss)
        return (None if grad_h is None else grad_h.to(ctx.dtypes[0]),
                None if grad_w is None else grad_w.to(ctx.dtypes[1]), None, None, None, None, None, None, None, None)


def output_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, select: torch.Tensor | None = None,
                temperature: float = 1.0, sequence_parallel: bool = False, chunk_elements: int | None = None,
                chunk_columns: int | None = None, compiled: bool = False, entropy_grad: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron's output layer, the log-softmax and the loss, fused: (loss, log-probs, entropies), the last two
    [b, s] fp32, 0 where `select` is False, detached (for metrics).

    Inputs as `mindrl.models.logprobs.output_log_probs_and_entropy`'s; `loss_of(logp, entropy)`: the scalar
    loss from [b, s] log-probs and entropies (0 off `select`), differentiable in them; `entropy_grad`: whether
    it depends on the entropies (an entropy bonus). The loss is differentiable in `hidden` and `weight`; their
    gradients are computed in this forward (see the module docstring) and returned by the backward, so megatron
    DDP's hooks see the weight's as the output layer's. `compiled`: compiled tile kernels
    (actor_config.compiled_logprob_tiles)."""
    rows, lab, pick = selected_rows(hidden, labels, select, sequence_parallel)
    inv_temp = 1.0 / temperature if temperature > 0 else 1.0

    def flat_loss(lp: torch.Tensor, ent: torch.Tensor) -> torch.Tensor:
        return loss_of(unselect(lp, pick), unselect(ent, pick))
    loss, logp, ent = _FusedLinearLoss.apply(rows, weight, lab, vocab_size, inv_temp, chunk_elements, chunk_columns,
                                             compiled, flat_loss, entropy_grad)
    return loss, unselect(logp, pick), unselect(ent, pick)


def last_call_separable() -> bool | None:
    """Whether the last `output_loss` used its per-block gradients (True) or recomputed them (False)."""
    return _FusedLinearLoss.separable


__all__ = ["block_rows", "last_call_separable", "output_loss"]
