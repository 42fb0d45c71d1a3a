"""The update's output layer with its gradient computed in the forward (`actor_config.head_grad_in_forward`).

mindrl.models.logprobs fuses the output layer with the log-softmax so that no `[tokens, vocab]` logits tensor
ever exists: its forward keeps per-token statistics only and its backward recomputes every logits tile. That
is four matmuls of `tokens x hidden x vocab` for the three the model FLOPs count (forward, input gradient,
weight gradient), and at hidden 256 x 151,936 vocab the output layer is three quarters of the update's FLOPs
(docs/benchmarks.md, issue 21).

Here the loss comes into the output layer instead, as Liger-Kernel's fused linear cross-entropy does: rows of
tokens are taken a block at a time over this rank's whole vocab slice (`rows x vocab/TP` logits, within the
planner's allowance for the log-probs' temporaries: `block_rows`); for each block the logits are computed once,
tile by tile of CHUNK_COLUMNS vocab entries (compiled tiles: the block at once), their log-normaliser and entropy
combined (TP: one MAX and one SUM all-reduce), the loss's gradient with respect to the block's log-probs (and
entropies) evaluated, and the output layer's gradients taken from the kept tiles right away. Three matmuls.
Two ways to the gradients:
- fp32 weights, eager, no entropy term in the loss (GRPO's default): `_weighted_statistics` turns each tile into
  exp(z - running max) while it is in the cache and accumulates A = sum_j exp(z_j - m) w_j with it, which is the
  hidden-state gradient's matmul done before the loss's gradient exists (it only scales A per token) and gives the
  entropy without a pass of its own; the weight gradient is then one matmul per kept tile (`_weighted_grads`).
  Per tile: four elementwise passes where the other way makes eight (docs/benchmarks.md, session 9).
- otherwise: per-tile statistics (`_online_statistics`), then each kept tile turned in place into its gradient
  (`_chunk_grad`) for both matmuls.
The hidden-state gradient waits for the backward, which scales it by the loss's upstream gradient. The weight's
goes, under megatron DDP, straight into its fp32 `main_grad` (times the upstream gradient the caller says the
backward will bring, checked there), as megatron's own gradient-accumulation fusion does: no weight-sized
gradient is allocated, returned, summed with the tied embedding's and added by DDP's hook.

Why that is exact: the loss's gradient at a token is evaluated before the later blocks' log-probs exist, with
zeros standing in for them. For a loss that is a sum of per-token terms (the clipped surrogate, CISPO, the KL
and entropy terms under every loss_agg_mode, with their normaliser fixed beforehand) a token's gradient does
not depend on the other tokens' values, so it is the gradient at the real ones. That is checked, not assumed,
twice: before a block's gradients are used, other stand-ins (-1 and 1) must give the same gradient at its tokens;
and every later evaluation must give the earlier tokens bit for bit the gradients used, the last one having every
real value. From the first block that fails (GSPO's ratio over a sequence the block splits), no more per-block
gradient work is done and the recompute path (`recompute_grads`) adds the remaining tokens' gradients from the
true values (the recompute then costs about what `false` does). `last_call_separable` / `last_call_kept` say
what ran.

May import: torch, megatron.core (parallel state), mindrl.models.logprobs / logprob_tiles / workspace.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from mindrl.models.logprobs import (CHUNK_COLUMNS, CHUNK_ELEMENTS, TileMatmul, _chunk_grad, _logits_into,
                                    _matmul_input, _online_statistics, _Scratch, _tp, _valid_columns, add_tile_grads,
                                    combine_ranks, recompute_grads, selected_rows, unselect)
from mindrl.models.workspace import release, workspace

# (log-probs [n], entropies [n]) of the selected tokens -> the scalar loss
FlatLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def block_rows(n: int, local: int, chunk_elements: int | None) -> int:
    """Tokens per block: its logits (`rows x local` fp32, the gradient written in place) within 2 x
    `chunk_elements` (CHUNK_ELEMENTS) values (and, eager, one `rows x CHUNK_COLUMNS` tile of exponentials),
    inside the three chunks the planner allows the log-probs (plan.ranks.logprob_chunk_bytes). Measured at
    hidden 256 x 151,936 (docs/benchmarks.md, issue 21): the logits matmul runs well from ~200 rows, and bigger
    blocks raised the update's peak RSS. From `local`, the padded vocab slice, equal on every TP rank: every
    rank runs the same blocks and all-reduces. Balanced: as many blocks as that bound needs, of equal size (512
    tokens: 3 x 171, not 220 + 220 + 72, whose small last block streams the whole weight for a third of the
    rows, and its matmuls run slower)."""
    most = max(1, min(n, 2 * (chunk_elements or CHUNK_ELEMENTS) // max(local, 1)))
    blocks = -(-n // most)
    return max(1, -(-n // blocks)) if n else most


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
    kept: tuple[int, int] = (0, 0)  # the last call's (tokens whose per-block gradients were used, tokens)

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                inv_temp: float, chunk_elements: int | None, chunk_columns: int | None, compiled: bool,
                loss_of: FlatLoss, entropy_grad: bool, main_grad: torch.Tensor | None, upstream: float,
                dummy_grad: bool, matmul: TileMatmul | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        # The weight's gradient: added straight into megatron's fp32 main_grad (`main_grad`, times the upstream
        # gradient the backward will bring), else a buffer of its own whose real rows the first block writes
        # (padded rows, never a token's, are 0).
        sink = main_grad if want_w and main_grad is not None else None
        grad_w = sink if sink is not None else (
            torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None)
        if grad_w is not None and sink is None:
            grad_w[n_valid if n else 0:].zero_()
        rows = block_rows(n, local, chunk_elements)
        # Eager: tiles of CHUNK_COLUMNS, whose several elementwise passes then run in the cache. Compiled: the
        # kernels make one or two streaming passes anyway, so a block is one tile (a tile per call measured
        # slower: the calls' overhead and narrower matmuls; docs/benchmarks.md, issue 21).
        cols = max(1, min(chunk_columns or (n_valid if compiled else CHUNK_COLUMNS), n_valid))
        busy = bool(n and n_valid)
        # fp32 eager without an entropy term in the loss: the softmax-weighted path (`_weighted_statistics`)
        weighted = not compiled and not entropy_grad and w.dtype == torch.float32
        # The block's logits, tile after tile, each tile [rows, cols] contiguous; and one tile of exponentials
        # (eager only: the compiled kernels write nothing but their results).
        block = workspace("fused_loss.block", min(rows, n) * n_valid, hidden.device) if busy else None
        exps = (_Scratch(min(rows, n) * cols, hidden.device, 1, "fused_loss.exps")
                if busy and not (compiled or weighted) else None)
        h_mm = _matmul_input(hidden, w, inv_temp)
        h_w = hidden.to(w.dtype).float() if want_w else None  # the weight gradient's matmul input, fp32
        if h_w is not None and sink is not None and upstream != 1.0:
            h_w = h_w * upstream  # the weight gradient is linear in it: main_grad gets the scaled one
        local_lab = labels - rank * local
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        full_lp, full_h = g_lp, g_h
        separable = True  # so far: every evaluation's gradient at the earlier blocks' tokens is the one used
        done = 0  # tokens whose per-block gradients were added
        for s in range(0, n, rows):
            e = min(n, s + rows)
            r, lab = e - s, local_lab[s:e]
            inside = (lab >= 0) & (lab < n_valid)
            tile = lambda c0, c1: block[r * c0:r * c1].view(r, c1 - c0)  # noqa: E731  (kept for the gradient)
            if weighted:
                m, big_s, big_t, picked, shifts, acc = _weighted_statistics(h_mm[s:e], w, lab, cols, tile, matmul)
            else:
                m, big_s, big_t, picked, shifts = _online_statistics(h_mm[s:e], w, lab, inv_temp, cols, tile,
                                                                     lambda width: exps(0, r, width), compiled,
                                                                     matmul=matmul)
            tiles = [(c0, min(n_valid, c0 + cols)) for c0 in range(0, n_valid if busy else 0, cols)]
            views = [tile(c0, c1) for c0, c1 in tiles]
            logp[s:e], entropy[s:e], lse[s:e] = combine_ranks(m, big_s, big_t, picked, inside, n_valid, group)
            # The loss's gradient at this block's tokens (later blocks' tokens still 0: see the docstring).
            loss, full_lp, full_h = _loss_grads(loss_of, logp, entropy, entropy_grad)
            # It sees the earlier blocks' real values: where their gradients differ from the ones used, the loss is
            # not token-separable and the rest is left to the recompute below (no more per-block gradient work).
            separable = separable and torch.equal(full_lp[:s], g_lp[:s]) and (
                g_h is None or torch.equal(full_h[:s], g_h[:s]))
            # And before this block's gradients are used: other stand-ins for the later tokens must not change them
            # (GSPO's sequence ratio over a sequence this block splits would), so that what is added is final.
            if separable and e < n:
                probe_lp, probe_h = logp.clone(), entropy.clone()
                probe_lp[e:], probe_h[e:] = -1.0, 1.0
                _, other_lp, other_h = _loss_grads(loss_of, probe_lp, probe_h, entropy_grad)
                separable = torch.equal(other_lp[:e], full_lp[:e]) and (
                    g_h is None or torch.equal(other_h[:e], full_h[:e]))
            g_lp[s:e] = full_lp[s:e]
            if g_h is not None:
                g_h[s:e] = full_h[s:e]
            done = e if separable else done
            if separable and (want_h or want_w) and weighted:
                _weighted_grads(views, tiles, shifts, acc, m, lse[s:e], g_lp[s:e], lab, inside, w, inv_temp,
                                None if grad_h is None else grad_h[s:e], grad_w,
                                None if h_w is None else h_w[s:e], first=s == 0 and sink is None)
            elif separable and (want_h or want_w):
                for (c0, c1), z, shift in zip(tiles, views, shifts):
                    gz = _chunk_grad(z, lse[s:e] - shift, entropy[s:e], g_lp[s:e],
                                     None if g_h is None else g_h[s:e], lab - c0, c1 - c0, inv_temp,
                                     None if compiled or g_h is None else exps(0, r, c1 - c0), compiled)
                    add_tile_grads(gz, w[c0:c1], None if grad_h is None else grad_h[s:e],
                                   None if grad_w is None else grad_w[c0:c1], None if h_w is None else h_w[s:e],
                                   first=s == 0 and sink is None)
                    del z, gz
        block = exps = None
        # The last evaluation saw every real value: the per-block gradients were checked against it above. Past
        # `done` the recompute path adds the tokens left (from the true values); where even the tokens before
        # `done` got other values than the true ones (a loss the probe above missed), everything is recomputed.
        if not separable and (want_h or want_w):
            release("fused_loss.block")  # freed before the recompute (else kept for the pass's next micro-batch)
            kept = torch.equal(full_lp[:done], g_lp[:done]) and (g_h is None or torch.equal(full_h[:done], g_h[:done]))
            if not kept and sink is not None:
                raise RuntimeError("fused output loss: the loss's gradient at earlier tokens changed with later "
                                   "tokens' values after it was added into main_grad; pass main_grad=None for it")
            start = done if kept else 0
            fix_h, fix_w = recompute_grads(hidden[start:], weight, labels[start:], lse[start:], entropy[start:],
                                           full_lp[start:], None if full_h is None else full_h[start:],
                                           vocab_size, inv_temp, chunk_elements, None, compiled, want_h, want_w,
                                           matmul)
            if start == 0 and sink is None:  # nothing kept: the recomputed gradients are the whole ones
                grad_h, grad_w = fix_h, fix_w
            else:
                if grad_h is not None:
                    grad_h[start:] += fix_h
                if grad_w is not None:
                    grad_w.add_(fix_w, alpha=upstream if sink is not None else 1.0)
        _FusedLinearLoss.separable = separable
        _FusedLinearLoss.kept = (n if separable else done, n)
        ctx.grads = (grad_h, None if sink is not None else grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.into_main = (weight, upstream, dummy_grad) if sink is not None else None
        ctx.mark_non_differentiable(logp, entropy)
        return loss, logp, entropy

    @staticmethod
    def backward(ctx, g_loss: torch.Tensor, _g_logp: torch.Tensor | None, _g_entropy: torch.Tensor | None):
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        g = float(g_loss)
        if g != 1.0:  # megatron's 1/micro-batches, data-parallel scaling: usually exactly 1
            grad_h = None if grad_h is None else grad_h.mul_(g_loss)
            grad_w = None if grad_w is None else grad_w.mul_(g_loss)
        if ctx.into_main is not None:  # the weight's gradient is in main_grad already
            weight, upstream, dummy = ctx.into_main
            ctx.into_main = None
            if not math.isclose(g, upstream, rel_tol=1e-6):
                raise RuntimeError(f"fused output loss: its weight gradient went into main_grad for an upstream "
                                   f"gradient of {upstream}, but the backward brought {g} (the caller's `upstream` "
                                   f"must be the scale megatron's schedule applies to this loss)")
            # megatron's convention (its gradient-accumulation fusion): a dummy gradient so that DDP's hook
            # runs, told by grad_added_to_main_grad not to add it; None where another use of the same
            # parameter (the tied word embedding) brings a real gradient that the hook must add
            if dummy:
                grad_w = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
                weight.grad_added_to_main_grad = True
        return (None if grad_h is None else grad_h.to(ctx.dtypes[0]),
                None if grad_w is None else grad_w.to(ctx.dtypes[1]),
                None, None, None, None, None, None, None, None, None, None, None, None)


def _weighted_statistics(hidden: torch.Tensor, w: torch.Tensor, local_lab: torch.Tensor, cols: int,
                         tile_out: Callable[[int, int], torch.Tensor], matmul: TileMatmul | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list, torch.Tensor]:
    """`_online_statistics` (fp32 weights; `hidden` with the temperature folded in) that also accumulates
    A = sum_j exp(z_j - m) w_j [rows, h], the softmax-weighted sum of the weight's rows, relative to the
    running max m like S. Each tile is left holding exp(z - its running max) (returned per tile as `shifts`).

    Why: with p = softmax(z), the hidden-state gradient of a token-separable loss is
    inv_temp * g (w_label - sum_j p_j w_j) = inv_temp * g (w_label - A e^(m - lse)), so the gradient's matmul over
    the vocab is done here, on each tile while it is in the cache, before g (the loss's gradient, known only
    once the block's log-normaliser is) exists; and T = sum exp(z - m)(z - m) = hidden . A - m S needs no pass
    of its own. The weight gradient keeps a pass over the stored tiles (`_weighted_grads`), a matmul without
    an elementwise pass: p is the stored tile times a per-row factor. Per tile: a max, one subtract, one exp and
    one sum over the tile instead of the eight passes of `_online_statistics` + `_chunk_grad`."""
    rows, n_valid = hidden.shape[0], w.shape[0]
    m = torch.full((rows,), float("-inf"), device=hidden.device)
    big_s, picked, shifts = torch.zeros_like(m), torch.zeros_like(m), []
    acc = torch.zeros(rows, hidden.shape[1], dtype=torch.float32, device=hidden.device)
    for c0 in range(0, n_valid, cols):
        c1 = min(n_valid, c0 + cols)
        # the backend's kernel gives a fresh tile: its exponentials then go to the kept one, no copy
        z = _logits_into(tile_out(c0, c1) if matmul is None else None, hidden, w[c0:c1], matmul)
        lab = local_lab - c0
        inside = (lab >= 0) & (lab < c1 - c0)
        picked = torch.where(inside, z.gather(1, lab.clamp(0, c1 - c0 - 1)[:, None])[:, 0], picked)
        new_m = torch.maximum(m, z.amax(dim=-1))
        ez = torch.sub(z, new_m[:, None], out=z if matmul is None else tile_out(c0, c1)).exp_()
        scale = (m - new_m).exp()  # 0 at the first tile (m = -inf)
        big_s = big_s * scale + ez.sum(-1)
        acc.mul_(scale[:, None]).addmm_(ez, w[c0:c1])
        shifts.append(new_m)
        m = new_m
    # T from A: sum_j e^(z_j - m) z_j = hidden . A (z_j = hidden . w_j); 0 on a rank without real columns
    big_t = (hidden * acc).sum(-1) - m * big_s if n_valid else torch.zeros_like(m)
    return m, big_s, big_t, picked, shifts, acc


def _weighted_grads(views: list[torch.Tensor], tiles: list[tuple[int, int]], shifts: list[torch.Tensor],
                    acc: torch.Tensor, m: torch.Tensor, lse: torch.Tensor, g_lp: torch.Tensor, local_lab: torch.Tensor,
                    inside: torch.Tensor, w: torch.Tensor, inv_temp: float, grad_h: torch.Tensor | None,
                    grad_w: torch.Tensor | None, h_w: torch.Tensor | None, first: bool) -> None:
    """One block's output-layer gradients from `_weighted_statistics` (tiles holding exp(z - shift)), for
    d loss / d logp = `g_lp` (global `lse`): with gz = inv_temp g (onehot - p) per token,
    grad_h += gz @ w = inv_temp g (w_label - A e^(m - lse)) (this rank's partial sum: w_label where it holds
    the label) and grad_w (`first`: written) += gz.T @ h = tiles.T @ (-inv_temp g e^(shift - lse) h) + the
    labels' rows inv_temp g h."""
    g = inv_temp * g_lp
    if grad_h is not None:
        own = torch.where(inside[:, None], w[local_lab.clamp(0, w.shape[0] - 1)], torch.zeros((), device=w.device))
        grad_h += g[:, None] * (own - acc * (m - lse).exp()[:, None])
    if grad_w is None:
        return
    for (c0, c1), ez, shift in zip(tiles, views, shifts):
        h_scaled = h_w * (-g * (shift - lse).exp())[:, None]
        if first:
            torch.mm(ez.t(), h_scaled, out=grad_w[c0:c1])
        else:
            grad_w[c0:c1].addmm_(ez.t(), h_scaled)
    grad_w.index_add_(0, local_lab[inside], g[inside][:, None] * h_w[inside])


def output_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, select: torch.Tensor | None = None,
                temperature: float = 1.0, sequence_parallel: bool = False, chunk_elements: int | None = None,
                chunk_columns: int | None = None, compiled: bool = False, entropy_grad: bool = False,
                main_grad: torch.Tensor | None = None, upstream: float = 1.0, dummy_grad: bool = True,
                matmul: TileMatmul | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """megatron's output layer, the log-softmax and the loss, fused: (loss, log-probs, entropies), the last two
    [b, s] fp32, 0 where `select` is False, detached (for metrics).

    Inputs as `mindrl.models.logprobs.output_log_probs_and_entropy`'s; `loss_of(logp, entropy)`: the scalar
    loss from [b, s] log-probs and entropies (0 off `select`), differentiable in them; `entropy_grad`: whether
    it depends on the entropies (an entropy bonus). The loss is differentiable in `hidden` and `weight`; their
    gradients are computed in this forward (see the module docstring) and returned by the backward, so megatron
    DDP's hooks see the weight's as the output layer's. `compiled`: compiled tile kernels
    (actor_config.compiled_logprob_tiles).

    `main_grad` (megatron DDP's fp32 gradient buffer of `weight`): the weight's gradient is added into it in
    this forward, times `upstream`, the gradient the backward will bring to the loss (checked there: a mismatch
    raises), instead of a weight-sized gradient being allocated, returned and added by DDP's hook. The backward
    then returns, as megatron's gradient-accumulation fusion does, an unwritten dummy gradient with
    `weight.grad_added_to_main_grad` set (`dummy_grad`), or None where the weight gets a real gradient from
    another use in the same graph (the tied word embedding on this stage), which the hook then adds. `matmul`: the
    backend's kernel for the logits tiles (`Backend.logits_matmul`), else torch.mm."""
    rows, lab, pick = selected_rows(hidden, labels, select, sequence_parallel)
    inv_temp = 1.0 / temperature if temperature > 0 else 1.0

    def flat_loss(lp: torch.Tensor, ent: torch.Tensor) -> torch.Tensor:
        return loss_of(unselect(lp, pick), unselect(ent, pick))
    loss, logp, ent = _FusedLinearLoss.apply(rows, weight, lab, vocab_size, inv_temp, chunk_elements, chunk_columns,
                                             compiled, flat_loss, entropy_grad, main_grad, upstream, dummy_grad,
                                             matmul)
    return loss, unselect(logp, pick), unselect(ent, pick)


def last_call_separable() -> bool | None:
    """Whether the last `output_loss` used its per-block gradients (True) or recomputed them (False)."""
    return _FusedLinearLoss.separable


def last_call_kept() -> tuple[int, int]:
    """(tokens whose per-block gradients the last `output_loss` used, its tokens): the rest were recomputed."""
    return _FusedLinearLoss.kept


__all__ = ["block_rows", "last_call_kept", "last_call_separable", "output_loss"]
