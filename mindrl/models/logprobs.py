"""Token log-probabilities and entropy from vocab-parallel logits, in chunks, ignoring TP vocab padding.

Megatron pads the vocab so every TP rank holds an equal slice; the padded columns are not tokens
and must not take probability mass, or the log-probs would change with the TP size.

Memory: `[tokens, vocab/TP]` logits are the biggest activation of an RL step (151k columns for
Qwen2.5). A plain `log_softmax` / cross-entropy keeps several fp32 copies of that size (scaled,
shifted, exp, softmax saved for backward). Here the logits are read chunk by chunk (`CHUNK_ELEMENTS`
values at a time) in both passes: the forward keeps only per-token statistics (log-normaliser,
entropy) and the backward recomputes each chunk's softmax to write the gradient. So besides the
logits themselves and their gradient (autograd needs both anyway), one chunk of temporaries exists.

TP > 1: each rank reduces its own vocab slice; per chunk one MAX and one SUM all-reduce of per-token
scalars combine the slices (the full vocab is never gathered). The backward needs no communication:
each rank's gradient slice depends only on its logits and the (already global) per-token statistics.

Fused output layer (`output_log_probs_and_entropy`): the training forwards need log-probs only at
response positions, so rather than megatron's output layer computing `[tokens, vocab/TP]` logits for
every position (prompt and padding included), the caller hands over the final hidden states and the
output layer's weight, and the logits are computed here one tile at a time: `CHUNK_COLUMNS` vocab
entries by all the *selected* tokens (by row blocks only when that exceeds `CHUNK_ELEMENTS`), in the
forward (an online log-sum-exp across the column chunks; per row block one MAX and one SUM
all-reduce under TP) and again in the backward (which writes each vocab slice of the weight's
gradient once, `[cols, tokens] @ [tokens, h]`, and accumulates the hidden states' gradient). No
logits tensor beyond one tile exists at all. Why columns, not rows of tokens: see
`_FusedLinearLogProbEntropy` and docs/benchmarks.md (issue 21).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel.mappings import (copy_to_tensor_model_parallel_region,
                                                    gather_from_sequence_parallel_region)

from mindrl.models.logprob_tiles import tile_gradient_, tile_statistics
from mindrl.models.workspace import workspace

CHUNK_ELEMENTS = 1 << 24  # fp32 values per chunk: 64 MiB of temporaries (~110 tokens at 151k vocab)
CHUNK_COLUMNS = 4096  # vocab entries per tile of the fused output layer (measured: docs/benchmarks.md)


def _valid_columns(local: int, vocab_size: int) -> int:
    """How many of this TP rank's `local` vocab columns are real tokens (the rest is padding)."""
    start = ps.get_tensor_model_parallel_rank() * local
    return max(0, min(local, vocab_size - start))


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Set this TP rank's columns at or beyond `vocab_size` to -inf (out of place)."""
    local = logits.shape[-1]
    n_valid = _valid_columns(local, vocab_size)
    if n_valid == local:
        return logits
    pad = torch.zeros(local, dtype=torch.bool, device=logits.device)
    pad[n_valid:] = True
    return logits.masked_fill(pad, float("-inf"))


def _chunk_rows(local: int, chunk_elements: int | None) -> int:
    return max(1, (chunk_elements or CHUNK_ELEMENTS) // max(local, 1))


class _Scratch:
    """Chunk-sized fp32 buffers allocated once per call and reused by every chunk. A fresh 64 MiB tensor
    per chunk and pass is not free on the CPU: torch's CPU allocator hands big blocks straight to
    mmap/munmap, so each one is page-faulted and zero-filled again (an `exp` into a fresh chunk took
    3x as long as into a reused one).

    Sized exactly (not padded up to force glibc to mmap them, which was tried): the planner counts what is
    allocated, and a padded buffer would be planned as used memory on every backend's plan; asking which
    allocator sits underneath is the backend's business, not this module's (docs/benchmarks.md, issue 21). Inside
    a pass (`mindrl.models.workspace.reuse_workspace`) they are also kept from one call to the next."""

    def __init__(self, elements: int, device: torch.device, count: int, name: str = "logprobs.scratch") -> None:
        # within a pass (mindrl.models.workspace) the same buffers serve every call: dead when the call ends
        self.bufs = [workspace(f"{name}{i}", elements, device) for i in range(count)]

    def __call__(self, i: int, rows: int, cols: int) -> torch.Tensor:
        return self.bufs[i][:rows * cols].view(rows, cols)


# x [rows, h] @ w[cols, h].T as a new [rows, cols] tensor, in w's dtype: the backend's kernel for the output
# layer's logits tiles where it has a faster one than torch.mm for that shape (`Backend.logits_matmul`)
TileMatmul = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _logits_into(out: torch.Tensor | None, hidden: torch.Tensor, w: torch.Tensor, matmul: TileMatmul | None = None
                 ) -> torch.Tensor:
    """out[rows, n_valid] = hidden @ w.T (in the weight's dtype, as megatron's output layer), as fp32; by
    `matmul` where given (its result copied into `out`). `out=None`: a new fp32 tensor (with `matmul`: its own
    result, no copy)."""
    h = hidden.to(w.dtype)
    z = matmul(h, w) if matmul is not None else None
    if out is None:
        return (h @ w.t() if z is None else z).float()
    if z is not None:
        return out.copy_(z)
    if w.dtype == torch.float32:
        return torch.mm(h, w.t(), out=out)
    return out.copy_(h @ w.t())


def _chunk_statistics(z: torch.Tensor, local_lab: torch.Tensor, n_valid: int, group: Any,
                      scratch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p(label), entropy, log-normaliser) per row of one chunk of scaled fp32 logits `z`
    [rows, n_valid] (this rank's real columns; overwritten). `local_lab` are labels relative to this
    rank's first column (outside [0, n_valid): another rank's token). `group`: the TP group or None."""
    rows = z.shape[0]
    zmax = z.max(dim=-1).values if n_valid else torch.full((rows,), float("-inf"), device=z.device)
    if group is not None:
        dist.all_reduce(zmax, op=dist.ReduceOp.MAX, group=group)
    z -= zmax[:, None]
    inside = (local_lab >= 0) & (local_lab < n_valid)
    picked = torch.zeros_like(zmax)
    if n_valid:
        picked = torch.where(inside, z.gather(1, local_lab.clamp(0, n_valid - 1)[:, None])[:, 0], picked)
    ez = z.exp() if scratch is None else torch.exp(z, out=scratch)  # scratch: a reused [rows, n_valid] buffer
    total = ez.sum(-1)
    # sum(exp(z) * z) per row, multiplied in place: `linalg.vecdot(ez, z)` computes the same product and
    # sum (bit-identical) but into a fresh chunk-sized tensor, page-faulted anew for every chunk (2.2x the
    # CPU time of exp + sum + this, docs/benchmarks.md).
    sums = torch.stack([total, picked, ez.mul_(z).sum(-1)])
    del ez
    if group is not None:
        dist.all_reduce(sums, group=group)
    log_norm = sums[0].log()
    return sums[1] - log_norm, log_norm - sums[2] / sums[0], zmax + log_norm


def _chunk_grad(z: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor, g_lp: torch.Tensor | None,
                g_h: torch.Tensor | None, local_lab: torch.Tensor, n_valid: int, inv_temp: float,
                scratch: torch.Tensor | None = None, compiled: bool = False) -> torch.Tensor:
    """d(g_lp . logp + g_h . H) / d(unscaled logits) for one chunk of scaled fp32 logits `z`
    [rows, n_valid] (overwritten and returned). Needs no communication: `lse` and `entropy` are global.

    With p = softmax, d logp(label)/dz = onehot - p and d H/dz = -p (log p + H), so the gradient is
    inv_temp * (p * (a log p + b) + g_lp onehot) with per-row a = -g_h, b = -(g_h H + g_lp): the
    vocab-wide work is three in-place passes (log p, p, and one multiply-add) over the chunk, the per-row
    factors (and the temperature) folded into a and b. `compiled`: the same formula in one compiled pass
    (mindrl.models.logprob_tiles)."""
    rows = z.shape[0]
    zero = torch.zeros(rows, dtype=z.dtype, device=z.device)
    lp = zero if g_lp is None else g_lp
    if compiled:
        gz = tile_gradient_(z, lse, zero if g_h is None else -inv_temp * g_h,
                            -inv_temp * (lp if g_h is None else g_h * entropy + lp))
    elif g_h is not None:
        logq = z.sub_(lse[:, None])  # log softmax
        p = logq.exp() if scratch is None else torch.exp(logq, out=scratch)
        a = (-inv_temp * g_h)[:, None]
        b = (-inv_temp * (g_h * entropy + lp))[:, None]
        gz = torch.addcmul(b, logq, a, out=logq).mul_(p)
        del p
    else:
        gz = z.sub_(lse[:, None]).exp_().mul_((-inv_temp * lp)[:, None])
    if g_lp is not None:
        inside = (local_lab >= 0) & (local_lab < n_valid)
        gz.scatter_add_(1, local_lab.clamp(0, n_valid - 1)[:, None],
                        torch.where(inside, inv_temp * g_lp, torch.zeros_like(g_lp))[:, None])
    return gz


def _tp() -> tuple[int, int, Any]:
    """(rank, size, group or None) of tensor parallelism."""
    tp = ps.get_tensor_model_parallel_world_size()
    return ps.get_tensor_model_parallel_rank(), tp, ps.get_tensor_model_parallel_group() if tp > 1 else None


class _LogProbEntropy(torch.autograd.Function):
    """(log p(label), entropy) per token of softmax(logits * inv_temp) over the real vocab, chunked."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, inv_temp: float,
                chunk_elements: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        local = logits.shape[-1]
        flat = logits.reshape(-1, local)
        lab = labels.reshape(-1)
        n = flat.shape[0]
        n_valid = _valid_columns(local, vocab_size)
        rank, _, group = _tp()
        logp = torch.empty(n, dtype=torch.float32, device=logits.device)
        entropy, lse = torch.empty_like(logp), torch.empty_like(logp)
        step = _chunk_rows(local, chunk_elements)
        scratch = _Scratch(min(step, n) * n_valid, logits.device, 2)
        for s in range(0, n, step):
            e = min(n, s + step)
            z = scratch(0, e - s, n_valid).copy_(flat[s:e, :n_valid])  # this chunk's vocab-sized copy
            if inv_temp != 1.0:
                z *= inv_temp
            logp[s:e], entropy[s:e], lse[s:e] = _chunk_statistics(z, lab[s:e] - rank * local, n_valid, group,
                                                                  scratch(1, e - s, n_valid))
        del scratch
        ctx.save_for_backward(logits, labels, lse, entropy)
        ctx.vocab_size, ctx.inv_temp, ctx.chunk_elements = vocab_size, inv_temp, chunk_elements
        ctx.set_materialize_grads(False)
        return logp.view(labels.shape), entropy.view(labels.shape)

    @staticmethod
    def backward(ctx, g_logp: torch.Tensor | None, g_entropy: torch.Tensor | None):
        logits, labels, lse, entropy = ctx.saved_tensors
        local = logits.shape[-1]
        flat = logits.reshape(-1, local)
        lab = labels.reshape(-1)
        n = flat.shape[0]
        n_valid = _valid_columns(local, ctx.vocab_size)
        rank = ps.get_tensor_model_parallel_rank()
        grad = torch.zeros_like(logits)  # padded columns keep a zero gradient
        grad_flat = grad.view(-1, local)
        g_lp = None if g_logp is None else g_logp.reshape(-1).float()
        g_h = None if g_entropy is None else g_entropy.reshape(-1).float()
        step = _chunk_rows(local, ctx.chunk_elements)
        scratch = _Scratch(min(step, n) * n_valid, logits.device, 2) if n and n_valid else None
        for s in range(0, n if n_valid else 0, step):
            e = min(n, s + step)
            z = scratch(0, e - s, n_valid).copy_(flat[s:e, :n_valid])  # fp32, ours to overwrite
            if ctx.inv_temp != 1.0:
                z.mul_(ctx.inv_temp)
            grad_flat[s:e, :n_valid] = _chunk_grad(
                z, lse[s:e], entropy[s:e], None if g_lp is None else g_lp[s:e],
                None if g_h is None else g_h[s:e], lab[s:e] - rank * local, n_valid, ctx.inv_temp,
                scratch(1, e - s, n_valid))
        return grad, None, None, None, None


def _tiles(n: int, local: int, chunk_elements: int | None, chunk_columns: int | None) -> tuple[int, int]:
    """(rows, columns) of the fused output layer's tiles: `columns` vocab entries (CHUNK_COLUMNS) of
    `rows` tokens, at most `chunk_elements` values a tile. Both depend only on `local` (the padded
    slice, equal on every TP rank), never on a rank's real columns: every rank must run the same row
    blocks, each ending in the same all-reduces."""
    budget = chunk_elements or CHUNK_ELEMENTS
    cols = max(1, min(local, chunk_columns or CHUNK_COLUMNS, budget))
    return max(1, min(n, budget // cols)), cols


def _matmul_input(hidden: torch.Tensor, w: torch.Tensor, inv_temp: float) -> torch.Tensor:
    """The fused output layer's matmul input: in the weight's dtype (as megatron's output layer), and for
    fp32 weights with the temperature folded in ((h / T) @ W^T, the same logits within fp32 rounding,
    one pass over every logits tile fewer). Low-precision weights keep megatron's order: logits of the
    rounded input, scaled in fp32."""
    if w.dtype == torch.float32 and inv_temp != 1.0:
        return hidden.float() * inv_temp
    return hidden.to(w.dtype)


def _rebase(big_s: torch.Tensor, big_t: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S = sum e^(z - m) and T = sum e^(z - m) (z - m), moved to a new max m' = m - d (d <= 0):
    sum e^(z - m') (z - m') = a (T + d S) and sum e^(z - m') = a S, with a = e^d."""
    a = d.exp()
    return a * big_s, a * (big_t + d * big_s)


def _online_statistics(hidden: torch.Tensor, w: torch.Tensor, local_lab: torch.Tensor, inv_temp: float, cols: int,
                       tile_out: Callable[[int, int], torch.Tensor], exp_out: Callable[[int], torch.Tensor] | None,
                       compiled: bool = False, with_entropy: bool = True, matmul: TileMatmul | None = None,
                       keep: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """One row block's statistics (`hidden` from `_matmul_input`) over this rank's real columns `w`
    [n_valid, h], read `cols` vocab entries at a time with an online (flash-style) log-sum-exp: per row
    the running max m, S = sum exp(z - m), T = sum exp(z - m) (z - m), rescaled when m grows, and the
    label's scaled logit (from the chunk that holds it; 0 where this rank holds no label). Returns
    (m, S, T, label logit); m is -inf and S = T = 0 on a rank without real columns. `compiled`: each tile's
    (max, S, T) from one compiled kernel (mindrl.models.logprob_tiles), merged into the running ones; without
    `with_entropy` (eager only) T is not summed and stays 0. Each column chunk's logits are written to
    `tile_out(c0, c1)` (a reused buffer, or, to keep them, a tile of the caller's own), the eager exponentials to
    `exp_out(width)`; also returned per chunk: the shift its written logits carry (eager subtracts the running
    max in place: that max; compiled leaves them as they are: 0). `matmul`: the backend's kernel for the logits
    (`_logits_into`); with `keep=False` (the caller does not keep the logits) its fresh tile is worked on in
    place instead of being copied into `tile_out`."""
    rows, n_valid = hidden.shape[0], w.shape[0]
    m = torch.full((rows,), float("-inf"), device=hidden.device)
    big_s, big_t, picked, shifts = torch.zeros_like(m), torch.zeros_like(m), torch.zeros_like(m), []
    for c0 in range(0, n_valid, cols):
        c1 = min(n_valid, c0 + cols)
        # `matmul`'s fresh tile is used as it is where the caller keeps nothing (no copy into `tile_out`)
        z = _logits_into(None if matmul is not None and not keep else tile_out(c0, c1), hidden, w[c0:c1], matmul)
        if inv_temp != 1.0 and w.dtype != torch.float32:  # fp32: folded into `hidden` by the caller
            z *= inv_temp
        lab = local_lab - c0
        inside = (lab >= 0) & (lab < c1 - c0)
        picked = torch.where(inside, z.gather(1, lab.clamp(0, c1 - c0 - 1)[:, None])[:, 0], picked)
        if compiled:  # the tile's own (max, S, T), moved to the running max
            m_c, s_c, t_c = tile_statistics(z)
            new_m = m_c if c0 == 0 else torch.maximum(m, m_c)
            if c0:
                s_c, t_c = _rebase(s_c, t_c, m_c - new_m)
            shifts.append(0.0)
        else:
            new_m = z.max(dim=-1).values if c0 == 0 else torch.maximum(m, z.max(dim=-1).values)
            z -= new_m[:, None]
            shifts.append(new_m)
            ez = torch.exp(z, out=exp_out(c1 - c0))
            s_c = ez.sum(-1)
            # in place on the exp buffer: no fresh chunk-sized product
            t_c = ez.mul_(z).sum(-1) if with_entropy else torch.zeros_like(s_c)
        if c0 == 0:
            big_s, big_t = s_c, t_c
        else:
            big_s, big_t = _rebase(big_s, big_t, m - new_m)
            big_s, big_t = big_s + s_c, big_t + t_c
        m = new_m
    return m, big_s, big_t, picked, shifts


def combine_ranks(m: torch.Tensor, big_s: torch.Tensor, big_t: torch.Tensor, picked: torch.Tensor,
                  inside: torch.Tensor, n_valid: int, group: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p(label), entropy, log-normaliser) per row from this rank's (m, S, T, label logit) over its real
    columns (`_online_statistics`; `inside`: this rank holds the label). Under TP (`group`) one MAX and one SUM
    all-reduce of per-row scalars combine the ranks' vocab slices."""
    if group is not None:
        gmax = m.clone()
        dist.all_reduce(gmax, op=dist.ReduceOp.MAX, group=group)
        if n_valid:  # rescale to the global max (a rank without real columns has S = T = 0)
            big_s, big_t = _rebase(big_s, big_t, m - gmax)
        m = gmax
    sums = torch.stack([big_s, torch.where(inside, picked - m, torch.zeros_like(m)), big_t])
    if group is not None:
        dist.all_reduce(sums, group=group)
    log_norm = sums[0].log()
    return sums[1] - log_norm, log_norm - sums[2] / sums[0], m + log_norm


class _FusedLinearLogProbEntropy(torch.autograd.Function):
    """(log p(label), entropy) per row of softmax((hidden @ weight.T) * inv_temp) over the real vocab:
    the output layer fused with the log-softmax, so logits exist one tile at a time, in the forward and
    again (recomputed) in the backward. `hidden` [n, h] is the full (TP-replicated) input, `weight`
    [vocab/TP, h] this rank's vocab slice; the returned grad of `hidden` is this rank's partial sum (the
    caller's TP region reduces it, as ColumnParallelLinear's input grad is).

    Tiles are chunks of vocab *columns* over (up to `rows` of) all the tokens, not chunks of tokens
    over the whole vocab: the weight is streamed once per pass rather than once per token chunk, and
    in the backward each vocab slice of the weight's gradient is one `[cols, tokens] @ [tokens, h]`
    matmul (K = the tokens, not a chunk's ~110 rows), written once. The forward's statistics come from
    an online log-sum-exp across the column chunks (`_online_statistics`); the backward's gradient of
    a column chunk is elementwise given the per-row log-normaliser and entropy (`_chunk_grad`)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                inv_temp: float, chunk_elements: int | None, chunk_columns: int | None = None,
                compiled: bool = False, with_entropy: bool = True, matmul: TileMatmul | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        local = weight.shape[0]
        n = hidden.shape[0]
        n_valid = _valid_columns(local, vocab_size)
        w = weight[:n_valid]  # padded vocab rows are not tokens: never computed
        rank, _, group = _tp()
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy, lse = torch.empty_like(logp), torch.empty_like(logp)
        rows, cols = _tiles(n, local, chunk_elements, chunk_columns)
        scratch = _Scratch(min(rows, n) * min(cols, n_valid), hidden.device, 1 if compiled else 2) if n else None
        local_lab = labels - rank * local
        for s in range(0, n, rows):
            e = min(n, s + rows)
            # The matmul in the weight's dtype, as megatron's output layer does; statistics in fp32.
            m, big_s, big_t, picked, _ = _online_statistics(
                _matmul_input(hidden[s:e], w, inv_temp), w, local_lab[s:e], inv_temp, cols,
                lambda c0, c1: scratch(0, e - s, c1 - c0), lambda width: scratch(1, e - s, width), compiled,
                with_entropy, matmul, keep=False)
            inside = (local_lab[s:e] >= 0) & (local_lab[s:e] < n_valid)
            logp[s:e], entropy[s:e], lse[s:e] = combine_ranks(m, big_s, big_t, picked, inside, n_valid, group)
        scratch = None  # freed
        ctx.save_for_backward(hidden, weight, labels, lse, entropy)
        ctx.vocab_size, ctx.inv_temp = vocab_size, inv_temp
        ctx.chunk_elements, ctx.chunk_columns, ctx.compiled = chunk_elements, chunk_columns, compiled
        ctx.matmul = matmul
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp: torch.Tensor | None, g_entropy: torch.Tensor | None):
        hidden, weight, labels, lse, entropy = ctx.saved_tensors
        grad_h, grad_w = recompute_grads(hidden, weight, labels, lse, entropy, g_logp, g_entropy, ctx.vocab_size,
                                         ctx.inv_temp, ctx.chunk_elements, ctx.chunk_columns, ctx.compiled,
                                         ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.matmul)
        return (None if grad_h is None else grad_h.to(hidden.dtype),
                None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None, None, None, None, None)


def recompute_grads(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor,
                    entropy: torch.Tensor, g_logp: torch.Tensor | None, g_entropy: torch.Tensor | None,
                    vocab_size: int, inv_temp: float, chunk_elements: int | None, chunk_columns: int | None,
                    compiled: bool, want_h: bool, want_w: bool, matmul: TileMatmul | None = None
                    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The fused output layer's backward: fp32 gradients of (hidden, weight) (None where not wanted) from the
    per-row log-normaliser and entropy of its forward, the logits recomputed one tile at a time (by `matmul`
    where given)."""
    local = weight.shape[0]
    n = hidden.shape[0]
    n_valid = _valid_columns(local, vocab_size)
    w = weight[:n_valid]
    rank = ps.get_tensor_model_parallel_rank()
    grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if want_h else None
    # fp32 (megatron accumulates weight grads in fp32 main_grad too); every real vocab row is written
    # by its column chunk's first row block, so only the padded rows need zeros.
    grad_w = torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
    if grad_w is not None:
        grad_w[n_valid if n else 0:].zero_()
    g_lp = None if g_logp is None else g_logp.float()
    g_h = None if g_entropy is None else g_entropy.float()
    rows, cols = _tiles(n, local, chunk_elements, chunk_columns)
    busy = n and n_valid and (want_h or want_w)
    scratch = (_Scratch(min(rows, n) * min(cols, n_valid), hidden.device, 1 if g_h is None or compiled else 2)
               if busy else None)
    h_mm = _matmul_input(hidden, w, inv_temp)  # the forward's matmul input
    h_w = hidden.to(w.dtype).float() if want_w else None  # the weight gradient's (unscaled), in fp32
    local_lab = labels - rank * local
    for c0 in range(0, n_valid if busy else 0, cols):
        c1 = min(n_valid, c0 + cols)
        w_c = w[c0:c1]
        for s in range(0, n, rows):
            e = min(n, s + rows)
            z = _logits_into(scratch(0, e - s, c1 - c0), h_mm[s:e], w_c, matmul)  # recomputed: none were kept
            if inv_temp != 1.0 and w.dtype != torch.float32:
                z.mul_(inv_temp)
            gz = _chunk_grad(z, lse[s:e], entropy[s:e], None if g_lp is None else g_lp[s:e],
                             None if g_h is None else g_h[s:e], local_lab[s:e] - c0, c1 - c0, inv_temp,
                             None if g_h is None or compiled else scratch(1, e - s, c1 - c0), compiled)
            add_tile_grads(gz, w_c, None if grad_h is None else grad_h[s:e],
                           None if grad_w is None else grad_w[c0:c1], None if h_w is None else h_w[s:e], first=s == 0)
            del z, gz
    return grad_h, grad_w


def add_tile_grads(gz: torch.Tensor, w_c: torch.Tensor, grad_h: torch.Tensor | None, grad_w: torch.Tensor | None,
                   h_w: torch.Tensor | None, first: bool) -> None:
    """One tile's share of the output layer's gradients, from its logits' gradient `gz` [rows, cols]:
    grad_h [rows, h] += gz @ w_c (in the weight's dtype, as megatron's input gradient), and grad_w [cols, h]
    (fp32) = (`first`: written, no zeros needed) or += gz.T @ h_w (the rows' fp32 matmul input)."""
    if grad_h is not None and w_c.dtype == torch.float32:
        grad_h.addmm_(gz, w_c)
    elif grad_h is not None:
        grad_h += (gz.to(w_c.dtype) @ w_c).float()
    if grad_w is not None and first:
        torch.mm(gz.t(), h_w, out=grad_w)
    elif grad_w is not None:
        grad_w.addmm_(gz.t(), h_w)


def token_log_probs_and_entropy(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, *,
                                temperature: float = 1.0, chunk_elements: int | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(labels) and the entropy of softmax(logits / temperature) per position, both [..] fp32,
    from vocab-parallel [.., vocab/TP] logits. Differentiable in both outputs (detach the entropy
    when it is only a metric: its backward then costs nothing)."""
    inv_temp = 1.0 / temperature if temperature > 0 else 1.0
    return _LogProbEntropy.apply(logits, labels, vocab_size, inv_temp, chunk_elements)


def output_log_probs_and_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                                 *, select: torch.Tensor | None = None, temperature: float = 1.0,
                                 sequence_parallel: bool = False, chunk_elements: int | None = None,
                                 chunk_columns: int | None = None, compiled: bool = False, entropy: bool = True,
                                 matmul: TileMatmul | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """megatron's output layer and `token_log_probs_and_entropy` fused, at the `select`ed positions only.

    hidden: the final (layer-normed) hidden states [s, b, h] as megatron's decoder returns them (this
    rank's sequence shard under sequence parallelism); weight: the output layer's vocab-parallel
    [vocab/TP, h] weight (the word embedding when tied); labels, select: [b, s].
    Returns log p(labels) and entropy of softmax(logits / temperature), [b, s] fp32, 0 where `select`
    is False. Tiles: `chunk_columns` vocab entries (default CHUNK_COLUMNS) by as many tokens as keep a
    tile within `chunk_elements` values (default CHUNK_ELEMENTS). Differentiable in hidden and weight;
    the weight's gradient is returned to autograd, so megatron DDP's grad hooks and tied-embedding
    reduction see it as the output layer's would be. `compiled`: each tile's elementwise work in compiled
    kernels (mindrl.models.logprob_tiles; actor_config.compiled_logprob_tiles). `entropy=False` (a forward
    that needs the log-probs only, e.g. the reference's): the entropy is not computed and None is returned
    in its place. `matmul`: the backend's kernel for the logits tiles (`Backend.logits_matmul`), else torch.mm."""
    rows, lab, pick = selected_rows(hidden, labels, select, sequence_parallel)
    inv_temp = 1.0 / temperature if temperature > 0 else 1.0
    logp, ent = _FusedLinearLogProbEntropy.apply(rows, weight, lab, vocab_size, inv_temp,
                                                 chunk_elements, chunk_columns, compiled, entropy, matmul)
    return unselect(logp, pick), unselect(ent, pick) if entropy else None


def selected_rows(hidden: torch.Tensor, labels: torch.Tensor, select: torch.Tensor | None, sequence_parallel: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused output layer's input: (hidden rows [n, h], their labels [n], pick [s, b]) of the `select`ed
    [b, s] positions (all when None) from megatron's [s, b, h] final hidden states, entered into the TP region
    exactly as ColumnParallelLinear enters it: every rank needs every selected token (it holds a vocab slice),
    and the hidden-state gradient, partial per vocab slice, is summed over TP on the way back (all-reduce;
    reduce-scatter back to the sequence shards under SP)."""
    if sequence_parallel:
        hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True)
    else:
        hidden = copy_to_tensor_model_parallel_region(hidden)
    if select is None:
        select = torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
    # Pick rows in megatron's [s, b] order: the gradient flowing back into the TP region is then a
    # plain contiguous tensor (megatron's all-reduce silently reduces a copy of a non-contiguous one).
    pick = select.bool().t()
    return hidden[pick], labels.t()[pick], pick


def unselect(values: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """Per-row results of `selected_rows` back to [b, s] (0 where not selected); differentiable."""
    zeros = torch.zeros(pick.shape, dtype=values.dtype, device=values.device)
    return zeros.index_put((pick,), values).t()


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, *, temperature: float = 1.0,
                    chunk_elements: int | None = None) -> torch.Tensor:
    """log p(labels) from [batch, seq, vocab/TP] logits; returns [batch, seq] in fp32 (chunked, see
    the module docstring; the full vocab is never gathered on one rank)."""
    return token_log_probs_and_entropy(logits, labels, vocab_size, temperature=temperature,
                                       chunk_elements=chunk_elements)[0]


def vocab_parallel_entropy(logits: torch.Tensor, vocab_size: int, grad: bool = False, *,
                           chunk_elements: int | None = None) -> torch.Tensor:
    """Entropy of softmax(logits) per position, [batch, seq], from vocab-parallel [.., vocab/TP] logits.
    `grad=True` keeps it differentiable (for an entropy bonus)."""
    labels = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    with torch.enable_grad() if grad else torch.no_grad():
        return token_log_probs_and_entropy(logits, labels, vocab_size, chunk_elements=chunk_elements)[1]
