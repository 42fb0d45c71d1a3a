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
output layer's weight, and the logits are computed here one chunk of *selected* tokens at a time,
in the forward and again in the backward (which writes the hidden states' and the weight's
gradients chunk by chunk). No logits tensor beyond one chunk exists at all; the vocab-parallel
statistics and their all-reduces are the same as above.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel.mappings import (copy_to_tensor_model_parallel_region,
                                                    gather_from_sequence_parallel_region)

CHUNK_ELEMENTS = 1 << 24  # fp32 values per chunk: 64 MiB of temporaries (~110 tokens at 151k vocab)


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
    3x as long as into a reused one)."""

    def __init__(self, rows: int, cols: int, device: torch.device, count: int) -> None:
        self.bufs = [torch.empty(rows * cols, dtype=torch.float32, device=device) for _ in range(count)]
        self.cols = cols

    def __call__(self, i: int, rows: int) -> torch.Tensor:
        return self.bufs[i][:rows * self.cols].view(rows, self.cols)


def _logits_into(out: torch.Tensor, hidden: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """out[rows, n_valid] = hidden @ w.T (in the weight's dtype, as megatron's output layer), as fp32."""
    h = hidden.to(w.dtype)
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
                scratch: torch.Tensor | None = None) -> torch.Tensor:
    """d(g_lp . logp + g_h . H) / d(unscaled logits) for one chunk of scaled fp32 logits `z`
    [rows, n_valid] (overwritten and returned). Needs no communication: `lse` and `entropy` are global.

    With p = softmax, d logp(label)/dz = onehot - p and d H/dz = -p (log p + H), so the gradient is
    inv_temp * (p * (a log p + b) + g_lp onehot) with per-row a = -g_h, b = -(g_h H + g_lp): the
    vocab-wide work is three in-place passes (log p, p, and one multiply-add) over the chunk, the per-row
    factors (and the temperature) folded into a and b."""
    logq = z.sub_(lse[:, None])  # log softmax
    rows = z.shape[0]
    zero = torch.zeros(rows, dtype=z.dtype, device=z.device)
    lp = zero if g_lp is None else g_lp
    if g_h is not None:
        p = logq.exp() if scratch is None else torch.exp(logq, out=scratch)
        a = (-inv_temp * g_h)[:, None]
        b = (-inv_temp * (g_h * entropy + lp))[:, None]
        gz = torch.addcmul(b, logq, a, out=logq).mul_(p)
        del p
    else:
        gz = logq.exp_().mul_((-inv_temp * lp)[:, None])
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
        scratch = _Scratch(min(step, n), n_valid, logits.device, 2)
        for s in range(0, n, step):
            e = min(n, s + step)
            z = scratch(0, e - s).copy_(flat[s:e, :n_valid])  # this chunk's vocab-sized copy
            if inv_temp != 1.0:
                z *= inv_temp
            logp[s:e], entropy[s:e], lse[s:e] = _chunk_statistics(z, lab[s:e] - rank * local, n_valid, group,
                                                                  scratch(1, e - s))
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
        scratch = _Scratch(min(step, n), n_valid, logits.device, 2) if n and n_valid else None
        for s in range(0, n if n_valid else 0, step):
            e = min(n, s + step)
            z = scratch(0, e - s).copy_(flat[s:e, :n_valid])  # fp32, ours to overwrite
            if ctx.inv_temp != 1.0:
                z.mul_(ctx.inv_temp)
            grad_flat[s:e, :n_valid] = _chunk_grad(
                z, lse[s:e], entropy[s:e], None if g_lp is None else g_lp[s:e],
                None if g_h is None else g_h[s:e], lab[s:e] - rank * local, n_valid, ctx.inv_temp, scratch(1, e - s))
        return grad, None, None, None, None


class _FusedLinearLogProbEntropy(torch.autograd.Function):
    """(log p(label), entropy) per row of softmax((hidden @ weight.T) * inv_temp) over the real vocab:
    the output layer fused with `_LogProbEntropy`, so logits exist one chunk of rows at a time, in
    the forward and again (recomputed) in the backward. `hidden` [n, h] is the full (TP-replicated)
    input, `weight` [vocab/TP, h] this rank's vocab slice; the returned grad of `hidden` is this
    rank's partial sum (the caller's TP region reduces it, as ColumnParallelLinear's input grad is)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                inv_temp: float, chunk_elements: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        local = weight.shape[0]
        n = hidden.shape[0]
        n_valid = _valid_columns(local, vocab_size)
        w = weight[:n_valid]  # padded vocab rows are not tokens: never computed
        rank, _, group = _tp()
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy, lse = torch.empty_like(logp), torch.empty_like(logp)
        step = _chunk_rows(local, chunk_elements)
        scratch = _Scratch(min(step, n), n_valid, hidden.device, 2) if n else None
        for s in range(0, n, step):
            e = min(n, s + step)
            # The matmul in the weight's dtype, as megatron's output layer does; statistics in fp32.
            z = _logits_into(scratch(0, e - s), hidden[s:e], w)
            if inv_temp != 1.0:
                z *= inv_temp
            logp[s:e], entropy[s:e], lse[s:e] = _chunk_statistics(z, labels[s:e] - rank * local, n_valid, group,
                                                                  scratch(1, e - s))
        del scratch
        ctx.save_for_backward(hidden, weight, labels, lse, entropy)
        ctx.vocab_size, ctx.inv_temp, ctx.chunk_elements = vocab_size, inv_temp, chunk_elements
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp: torch.Tensor | None, g_entropy: torch.Tensor | None):
        hidden, weight, labels, lse, entropy = ctx.saved_tensors
        local = weight.shape[0]
        n = hidden.shape[0]
        n_valid = _valid_columns(local, ctx.vocab_size)
        w = weight[:n_valid]
        rank = ps.get_tensor_model_parallel_rank()
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if want_h else None
        # fp32 accumulation over chunks (megatron accumulates weight grads in fp32 main_grad too);
        # padded vocab rows keep a zero gradient.
        grad_w = torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        if grad_w is not None:  # the first chunk writes its rows (`mm(out=)`), so only the rest needs zeros
            grad_w[n_valid if n else 0:].zero_()
        g_lp = None if g_logp is None else g_logp.float()
        g_h = None if g_entropy is None else g_entropy.float()
        step = _chunk_rows(local, ctx.chunk_elements)
        busy = n and n_valid and (want_h or want_w)
        scratch = _Scratch(min(step, n), n_valid, hidden.device, 1 if g_h is None else 2) if busy else None
        for s in range(0, n if busy else 0, step):
            e = min(n, s + step)
            h = hidden[s:e].to(w.dtype)
            z = _logits_into(scratch(0, e - s), h, w)  # recomputed: the forward kept no logits
            if ctx.inv_temp != 1.0:
                z.mul_(ctx.inv_temp)
            gz = _chunk_grad(z, lse[s:e], entropy[s:e], None if g_lp is None else g_lp[s:e],
                             None if g_h is None else g_h[s:e], labels[s:e] - rank * local, n_valid, ctx.inv_temp,
                             None if g_h is None else scratch(1, e - s))
            if want_h:
                grad_h[s:e] = (gz.to(w.dtype) @ w).float()
            if want_w and s == 0:  # not zeros + addmm_: one fill of the [vocab, hidden] gradient fewer per call
                torch.mm(gz.t(), h.float(), out=grad_w[:n_valid])
            elif want_w:
                grad_w[:n_valid].addmm_(gz.t(), h.float())
            del z, gz
        return (None if grad_h is None else grad_h.to(hidden.dtype), None if grad_w is None else grad_w.to(weight.dtype),
                None, None, None, None)


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
                                 sequence_parallel: bool = False, chunk_elements: int | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """megatron's output layer and `token_log_probs_and_entropy` fused, at the `select`ed positions only.

    hidden: the final (layer-normed) hidden states [s, b, h] as megatron's decoder returns them (this
    rank's sequence shard under sequence parallelism); weight: the output layer's vocab-parallel
    [vocab/TP, h] weight (the word embedding when tied); labels, select: [b, s].
    Returns log p(labels) and entropy of softmax(logits / temperature), [b, s] fp32, 0 where `select`
    is False. Differentiable in hidden and weight; the weight's gradient is returned to autograd, so
    megatron DDP's grad hooks and tied-embedding reduction see it as the output layer's would be."""
    # The input's TP region exactly as ColumnParallelLinear enters it: every rank needs every selected
    # token (it holds a vocab slice), and the hidden-state gradient, partial per vocab slice, is summed
    # over TP on the way back (all-reduce; reduce-scatter back to the sequence shards under SP).
    if sequence_parallel:
        hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True)
    else:
        hidden = copy_to_tensor_model_parallel_region(hidden)
    if select is None:
        select = torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
    # Pick rows in megatron's [s, b] order: the gradient flowing back into the TP region is then a
    # plain contiguous tensor (megatron's all-reduce silently reduces a copy of a non-contiguous one).
    pick = select.bool().t()
    inv_temp = 1.0 / temperature if temperature > 0 else 1.0
    logp, entropy = _FusedLinearLogProbEntropy.apply(hidden[pick], weight, labels.t()[pick], vocab_size, inv_temp,
                                                     chunk_elements)
    zeros = torch.zeros(pick.shape, dtype=torch.float32, device=logp.device)
    return zeros.index_put((pick,), logp).t(), zeros.index_put((pick,), entropy).t()


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
