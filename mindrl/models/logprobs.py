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
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

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
        start = ps.get_tensor_model_parallel_rank() * local
        tp = ps.get_tensor_model_parallel_world_size()
        group = ps.get_tensor_model_parallel_group() if tp > 1 else None
        logp = torch.empty(n, dtype=torch.float32, device=logits.device)
        entropy = torch.empty_like(logp)
        lse = torch.empty_like(logp)
        step = _chunk_rows(local, chunk_elements)
        for s in range(0, n, step):
            e = min(n, s + step)
            z = flat[s:e, :n_valid].to(torch.float32, copy=True)  # this chunk's only vocab-sized copy
            if inv_temp != 1.0:
                z *= inv_temp
            zmax = z.max(dim=-1).values if n_valid else torch.full((e - s,), float("-inf"), device=z.device)
            if tp > 1:
                dist.all_reduce(zmax, op=dist.ReduceOp.MAX, group=group)
            z -= zmax[:, None]  # in place: the chunk is our own copy
            local_lab = lab[s:e] - start
            inside = (local_lab >= 0) & (local_lab < n_valid)
            picked = torch.zeros_like(zmax)
            if n_valid:
                picked = torch.where(inside, z.gather(1, local_lab.clamp(0, n_valid - 1)[:, None])[:, 0], picked)
            ez = z.exp()
            sums = torch.stack([ez.sum(-1), picked, torch.linalg.vecdot(ez, z)])
            del ez, z
            if tp > 1:
                dist.all_reduce(sums, group=group)
            log_norm = sums[0].log()
            logp[s:e] = sums[1] - log_norm
            entropy[s:e] = log_norm - sums[2] / sums[0]
            lse[s:e] = zmax + log_norm
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
        start = ps.get_tensor_model_parallel_rank() * local
        inv_temp = ctx.inv_temp
        grad = torch.zeros_like(logits)  # padded columns keep a zero gradient
        grad_flat = grad.view(-1, local)
        g_lp = None if g_logp is None else g_logp.reshape(-1).float()
        g_h = None if g_entropy is None else g_entropy.reshape(-1).float()
        step = _chunk_rows(local, ctx.chunk_elements)
        for s in range(0, n, step):
            if not n_valid:
                break
            e = min(n, s + step)
            logq = flat[s:e, :n_valid].float() * inv_temp - lse[s:e, None]  # log softmax, this chunk
            p = logq.exp()
            # d logp(label)/dz = onehot - p ; d H/dz = -p * (log p + H)
            if g_h is not None:
                logq += entropy[s:e, None]
                gz = logq.mul_(p).mul_(-g_h[s:e, None])
            else:
                gz = torch.zeros_like(p)
            if g_lp is not None:
                gz.sub_(p.mul_(g_lp[s:e, None]))
                local_lab = lab[s:e] - start
                inside = (local_lab >= 0) & (local_lab < n_valid)
                gz.scatter_add_(1, local_lab.clamp(0, n_valid - 1)[:, None],
                                torch.where(inside, g_lp[s:e], torch.zeros_like(g_lp[s:e]))[:, None])
            if inv_temp != 1.0:
                gz.mul_(inv_temp)
            grad_flat[s:e, :n_valid] = gz
        return grad, None, None, None, None


def token_log_probs_and_entropy(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, *,
                                temperature: float = 1.0, chunk_elements: int | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(labels) and the entropy of softmax(logits / temperature) per position, both [..] fp32,
    from vocab-parallel [.., vocab/TP] logits. Differentiable in both outputs (detach the entropy
    when it is only a metric: its backward then costs nothing)."""
    inv_temp = 1.0 / temperature if temperature > 0 else 1.0
    return _LogProbEntropy.apply(logits, labels, vocab_size, inv_temp, chunk_elements)


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
