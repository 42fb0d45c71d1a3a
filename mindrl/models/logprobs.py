"""Token log-probabilities from vocab-parallel logits, ignoring the TP vocab padding.

Megatron pads the vocab so every TP rank holds an equal slice; the padded columns are not tokens
and must not take probability mass, or the log-probs would change with the TP size.
"""
from __future__ import annotations

import torch
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy


def mask_padded_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Set this TP rank's columns at or beyond `vocab_size` to -inf (out of place)."""
    local = logits.shape[-1]
    start = ps.get_tensor_model_parallel_rank() * local
    n_valid = max(0, min(local, vocab_size - start))
    if n_valid == local:
        return logits
    pad = torch.zeros(local, dtype=torch.bool, device=logits.device)
    pad[n_valid:] = True
    return logits.masked_fill(pad, float("-inf"))


def token_log_probs(logits: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log p(labels) from [batch, seq, vocab/TP] logits; returns [batch, seq] in fp32.

    Uses megatron's vocab-parallel cross entropy, so the full vocab is never gathered on one rank.
    """
    logits = mask_padded_vocab(logits.float(), vocab_size)
    return -vocab_parallel_cross_entropy(logits.transpose(0, 1).contiguous(), labels.transpose(0, 1).contiguous()).transpose(0, 1)


def vocab_parallel_entropy(logits: torch.Tensor, vocab_size: int, grad: bool = False) -> torch.Tensor:
    """Entropy of softmax(logits) per position, [batch, seq], from vocab-parallel [.., vocab/TP] logits.

    H = logsumexp(z) - sum(softmax(z) * z), with the max, the normaliser and the weighted sum reduced
    over TP. `grad=True` keeps it differentiable (for an entropy bonus): the sums go through
    torch.distributed.nn's differentiable all-reduce.
    """
    logits = mask_padded_vocab(logits.float(), vocab_size)
    group = ps.get_tensor_model_parallel_group()
    tp = ps.get_tensor_model_parallel_world_size()
    with torch.no_grad():
        zmax = logits.max(dim=-1, keepdim=True).values
        if tp > 1:
            torch.distributed.all_reduce(zmax, op=torch.distributed.ReduceOp.MAX, group=group)
    context = torch.enable_grad() if grad else torch.no_grad()
    with context:
        shifted = logits - zmax
        exp = shifted.exp()  # exp(-inf) = 0 for padded columns
        sums = torch.stack([exp.sum(-1), (exp * shifted.nan_to_num(neginf=0.0)).sum(-1)])
        if tp > 1:
            if grad:
                from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

                sums = differentiable_all_reduce(sums, group=group)
            else:
                torch.distributed.all_reduce(sums, group=group)
        normaliser, weighted = sums[0], sums[1]
        return normaliser.log() - weighted / normaliser
