"""Masked reductions and loss aggregation (`loss_agg_mode`): a [batch, seq] loss matrix -> a scalar.

Every mode is "numerator / denominator":

    token-mean               sum_{i,t} m_it l_it                 / sum_{i,t} m_it          (DAPO, verl default)
    seq-mean-token-mean      sum_i [sum_t m_it l_it / sum_t m_it] / #valid seqs             (original GRPO)
    seq-mean-token-sum       sum_i  sum_t m_it l_it               / #valid seqs
    seq-mean-token-sum-norm  sum_i  sum_t m_it l_it / L          / #valid seqs             (Dr.GRPO, L constant)

A "valid" sequence has at least one unmasked token; fully-masked rows (padding rows, overlong-filtered
responses) are left out of the sequence count, as if they had never been sampled.

Gradient accumulation and data parallelism
------------------------------------------
The denominator above is *local* (this micro-batch). Averaging per-micro-batch token-means is NOT the
token-mean of the step: a micro-batch with 10 tokens would weigh as much as one with 10,000. To get the
exact global mean, the caller computes `loss_normaliser(mask, mode)` for every micro-batch of the optimizer
step, sums those, all-reduces (SUM) across data-parallel ranks, and passes the total as
`global_normaliser` to every micro-batch. Each micro-batch loss is then `local numerator / global
denominator`, and the *sum* of the gradients over micro-batches and ranks is the gradient of the global mean.
Megatron-core scales each micro-batch loss by 1/num_microbatches (unless `calculate_per_token_loss`) and
its DDP averages gradients over DP ranks (1/dp_size), so multiply by num_microbatches * dp_size to undo
that, or turn those scalings off.

Empty masks give 0 (never NaN): denominators are clamped to >= 1, and a zero numerator stays 0.
Inputs in bf16/fp16 are accumulated in fp32 (fp64 stays fp64).
"""
from __future__ import annotations

from typing import Callable

import torch

Normaliser = float | int | torch.Tensor | None


def acc_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype we accumulate in: fp64 stays fp64, everything else (bf16, fp16, int, bool) -> fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def to_acc(x: torch.Tensor) -> torch.Tensor:
    """Cast to the accumulation dtype (fp32, or fp64 if already fp64). Differentiable."""
    return x.to(acc_dtype(x))


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(values * mask) over `dim` (all dims if None), in fp32. The mask is binary (nonzero = keep);
    masked positions cannot leak NaN/inf."""
    values = to_acc(values)
    # where(), not multiply: 0 * inf = NaN, and padded positions may hold garbage (e.g. -inf logprobs).
    masked = torch.where(mask.bool(), values, torch.zeros_like(values))
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(values * mask) / sum(mask) over `dim`; an empty mask gives 0, not NaN."""
    total = masked_sum(values, mask, dim)
    count = mask.bool().to(total.dtype)
    count = count.sum() if dim is None else count.sum(dim=dim)
    return total / count.clamp(min=1.0)


def _divide(numerator: torch.Tensor, local_denominator: torch.Tensor, global_normaliser: Normaliser) -> torch.Tensor:
    denominator = local_denominator if global_normaliser is None else global_normaliser
    denominator = torch.as_tensor(denominator, dtype=numerator.dtype, device=numerator.device)
    return numerator / denominator.clamp(min=1.0)


def _valid_seqs(loss_mask: torch.Tensor) -> torch.Tensor:
    return (loss_mask.bool().sum(dim=-1) > 0)


def token_mean(loss_mat: torch.Tensor, loss_mask: torch.Tensor, global_normaliser: Normaliser = None,
               max_response_length: int | None = None) -> torch.Tensor:
    """token-mean: sum_{i,t} m l / (number of unmasked tokens, or `global_normaliser`)."""
    numerator = masked_sum(loss_mat, loss_mask)
    return _divide(numerator, loss_mask.bool().to(numerator.dtype).sum(), global_normaliser)


def seq_mean_token_mean(loss_mat: torch.Tensor, loss_mask: torch.Tensor, global_normaliser: Normaliser = None,
                        max_response_length: int | None = None) -> torch.Tensor:
    """seq-mean-token-mean: mean over valid sequences of each sequence's token-mean (original GRPO)."""
    per_seq = masked_mean(loss_mat, loss_mask, dim=-1)  # fully-masked rows give 0
    valid = _valid_seqs(loss_mask)
    return _divide(per_seq.sum(), valid.to(per_seq.dtype).sum(), global_normaliser)


def seq_mean_token_sum(loss_mat: torch.Tensor, loss_mask: torch.Tensor, global_normaliser: Normaliser = None,
                       max_response_length: int | None = None) -> torch.Tensor:
    """seq-mean-token-sum: mean over valid sequences of each sequence's token-sum."""
    per_seq = masked_sum(loss_mat, loss_mask, dim=-1)
    valid = _valid_seqs(loss_mask)
    return _divide(per_seq.sum(), valid.to(per_seq.dtype).sum(), global_normaliser)


def seq_mean_token_sum_norm(loss_mat: torch.Tensor, loss_mask: torch.Tensor, global_normaliser: Normaliser = None,
                            max_response_length: int | None = None) -> torch.Tensor:
    """seq-mean-token-sum-norm (Dr.GRPO, arXiv:2503.20783): (1/G) sum_i sum_t m l / L.

    L = `max_response_length` (default: loss_mat.shape[-1]) must be a constant for the whole run, otherwise
    the length bias Dr.GRPO removes comes back; pass the configured max response length, not the padded
    width of the batch (which varies). verl computes sum / L without the 1/G; ours keeps the paper's 1/G,
    a constant factor (batch size) that only rescales the learning rate.
    """
    length = loss_mat.shape[-1] if max_response_length is None else max_response_length
    if length <= 0:
        raise ValueError(f"max_response_length must be > 0, got {length}")
    per_seq = masked_sum(loss_mat, loss_mask, dim=-1) / float(length)
    valid = _valid_seqs(loss_mask)
    return _divide(per_seq.sum(), valid.to(per_seq.dtype).sum(), global_normaliser)


AggregationFn = Callable[..., torch.Tensor]

# name -> function(loss_mat, loss_mask, global_normaliser=None, max_response_length=None). Add one line.
LOSS_AGGREGATIONS: dict[str, AggregationFn] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "seq-mean-token-sum": seq_mean_token_sum,
    "seq-mean-token-sum-norm": seq_mean_token_sum_norm,
}


def lookup(registry: dict, name: str, what: str):
    """registry[name], or a ValueError that lists the valid names."""
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; valid: {sorted(registry)}") from None


def agg_loss(loss_mat: torch.Tensor, loss_mask: torch.Tensor, loss_agg_mode: str = "token-mean",
             global_normaliser: Normaliser = None, max_response_length: int | None = None) -> torch.Tensor:
    """Aggregate a [batch, seq] loss matrix into a scalar with `loss_agg_mode` (see module docstring)."""
    if loss_mat.shape != loss_mask.shape:
        raise ValueError(f"loss_mat {tuple(loss_mat.shape)} and loss_mask {tuple(loss_mask.shape)} differ")
    fn = lookup(LOSS_AGGREGATIONS, loss_agg_mode, "loss_agg_mode")
    return fn(loss_mat, loss_mask, global_normaliser=global_normaliser, max_response_length=max_response_length)


def loss_normaliser(loss_mask: torch.Tensor, loss_agg_mode: str = "token-mean") -> torch.Tensor:
    """This micro-batch's share of the denominator for `loss_agg_mode`: #unmasked tokens for token-mean,
    #valid sequences for the seq-* modes. Sum it over the step's micro-batches and all-reduce (SUM) over DP,
    then pass the total as `global_normaliser`."""
    lookup(LOSS_AGGREGATIONS, loss_agg_mode, "loss_agg_mode")
    if loss_agg_mode == "token-mean":
        return loss_mask.bool().sum().to(torch.float32)
    return _valid_seqs(loss_mask).sum().to(torch.float32)
