"""Per-token entropy of the policy's next-token distribution, and the entropy bonus.

    H(p) = -sum_v p_v log p_v = logsumexp(z) - sum_v softmax(z)_v z_v        (z = logits)

The logsumexp form (as verl `entropy_from_logits`) never takes log of a softmax probability, so it stays
finite when probabilities underflow to 0. Computed in fp32 whatever the logits dtype: bf16 has 8 mantissa
bits and sum_v p_v z_v over a 150k vocab loses most of them.

Vocab entries masked to -inf (banned tokens) contribute 0: lim p->0 of p log p = 0. We zero those logits
before the product rather than multiplying 0 * -inf, which would give NaN in the value and in the gradient.

With tensor-parallel vocab sharding the logsumexp and the sum run across ranks; that all-reduce belongs to
the caller (this module makes no distributed calls).

Entropy bonus (`entropy_coeff`, verl/MindSpeed-RL): loss = pg_loss - entropy_coeff * agg(H); `entropy_coeff`
0 (the R1-Zero / DAPO default) turns it off. See `compute_actor_loss` in losses.py.
"""
from __future__ import annotations

import torch

from .aggregation import Normaliser, agg_loss, to_acc


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) - sum softmax(z) * z over the last (vocab) dim; [..., V] -> [...] in fp32."""
    z = to_acc(logits)
    finite = torch.isfinite(z)
    probs = torch.softmax(z, dim=-1)
    # A -inf logit has p = 0 and contributes 0; zeroing it avoids 0 * -inf = NaN (value and gradient).
    safe_z = torch.where(finite, z, torch.zeros_like(z))
    return torch.logsumexp(z, dim=-1) - (probs * safe_z).sum(dim=-1)


def entropy_from_logprobs(log_probs: torch.Tensor) -> torch.Tensor:
    """H = -sum exp(logp) * logp over the last (vocab) dim, given log-probs of all vocab entries (already
    normalised, e.g. log_softmax output); [..., V] -> [...] in fp32. -inf entries contribute 0."""
    lp = to_acc(log_probs)
    safe_lp = torch.where(torch.isfinite(lp), lp, torch.zeros_like(lp))
    return -(torch.exp(lp) * safe_lp).sum(dim=-1)


def entropy_loss(entropy: torch.Tensor, response_mask: torch.Tensor, loss_agg_mode: str = "token-mean",
                 global_normaliser: Normaliser = None, max_response_length: int | None = None) -> torch.Tensor:
    """agg(H) over response tokens: the quantity the bonus maximises. Total loss adds -entropy_coeff * this.

    Aggregate with the same mode and normaliser as the policy loss so the bonus has the same weighting.
    """
    return agg_loss(entropy, response_mask, loss_agg_mode, global_normaliser, max_response_length)


def entropy_bonus(entropy: torch.Tensor, response_mask: torch.Tensor, entropy_coeff: float,
                  loss_agg_mode: str = "token-mean", global_normaliser: Normaliser = None,
                  max_response_length: int | None = None) -> torch.Tensor:
    """The term to ADD to the loss: -entropy_coeff * agg(H). Exactly 0 (no graph) when entropy_coeff == 0."""
    if entropy_coeff == 0.0:
        return torch.zeros((), dtype=to_acc(entropy).dtype, device=entropy.device)
    return -entropy_coeff * entropy_loss(entropy, response_mask, loss_agg_mode, global_normaliser,
                                         max_response_length)
