"""The clipped-surrogate policy loss (PPO / GRPO / DAPO), and the full actor loss.

Per token, with ratio rho = pi_theta / pi_old = exp(logp - old_logp) and advantage A (PPO, arXiv:1707.06347):

    l1 = -A rho
    l2 = -A clip(rho, 1 - clip_ratio_low, 1 + clip_ratio_high)
    l  = max(l1, l2)                                                   pessimistic bound

`clip_ratio_low` / `clip_ratio_high` default to `clip_ratio`; DAPO (arXiv:2503.14476) "clip-higher" sets
high > low (0.28 / 0.2) so low-probability tokens can still gain mass. Dual-clip (Ye et al. 2020,
arXiv:1912.09729; verl `clip_ratio_c`, default there 3.0): for A < 0 the max() above is unbounded as rho grows,
so it is capped:  l = min(max(l1, l2), -A * clip_ratio_c)  when A < 0.  Here `clip_ratio_c=None` turns it off.

The log-ratio is clamped to [-20, 20] before exp (as verl) so a stale or diverged token gives a large but
finite ratio instead of inf / NaN. Everything is computed in fp32 whatever the input dtype.

Metrics (verl names, detached 0-dim tensors, masked token-means over *this* micro-batch; 0 for an empty mask):
    pg_clipfrac        fraction of tokens where the clipped branch is active (l2 > l1)
    pg_clipfrac_lower  fraction of tokens where the dual-clip cap is active (A < 0 and max(l1, l2) > -A c)
    ppo_kl             k1 estimate of KL(pi_old || pi_theta): mean(old_logp - logp)
    ppo_kl_k3          k3 estimate of the same: mean(rho - 1 - log rho), >= 0
    ratio_mean, ratio_max, ratio_min
"""
from __future__ import annotations

import torch

from .aggregation import Normaliser, agg_loss, masked_mean, to_acc
from .entropy import entropy_bonus
from .kl import kl_loss

LOG_RATIO_CLAMP = 20.0


def _masked_extreme(values: torch.Tensor, mask: torch.Tensor, largest: bool) -> torch.Tensor:
    """Masked max/min; 0 for an empty mask. Tensor ops only: an `if mask.any()` would sync the device."""
    fill = torch.full_like(values, -torch.inf if largest else torch.inf)
    picked = torch.where(mask, values, fill)
    extreme = picked.max() if largest else picked.min()
    return torch.where(mask.any(), extreme, torch.zeros_like(extreme))


def compute_policy_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                        response_mask: torch.Tensor, clip_ratio: float = 0.2, clip_ratio_low: float | None = None,
                        clip_ratio_high: float | None = None, clip_ratio_c: float | None = None,
                        loss_agg_mode: str = "token-mean", global_normaliser: Normaliser = None,
                        max_response_length: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped-surrogate policy loss (formulas in the module docstring); returns (loss, metrics).

    old_log_prob, log_prob, response_mask: [batch, seq]; advantages: [batch, seq] or [batch] (broadcast).
    Gradient flows only through log_prob. Tokens whose clipped branch (or dual-clip cap) is active get zero
    gradient, which is the point of clipping.
    """
    if old_log_prob.shape != log_prob.shape or response_mask.shape != log_prob.shape:
        raise ValueError(f"shapes differ: old_log_prob {tuple(old_log_prob.shape)}, log_prob "
                         f"{tuple(log_prob.shape)}, response_mask {tuple(response_mask.shape)}")
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    if low < 0 or high < 0:
        raise ValueError(f"clip ratios must be >= 0, got low={low}, high={high}")
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (dual-clip lower bound), got {clip_ratio_c}")

    logp = to_acc(log_prob)
    old = to_acc(old_log_prob).detach().to(logp.dtype)
    adv = to_acc(advantages).detach().to(logp.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    adv = adv.expand_as(logp)
    mask = response_mask.bool()

    log_ratio = (logp - old).clamp(min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    pg_losses1 = -adv * ratio
    pg_losses2 = -adv * ratio.clamp(1.0 - low, 1.0 + high)
    clipped_losses = torch.maximum(pg_losses1, pg_losses2)
    clipped = pg_losses2 > pg_losses1

    if clip_ratio_c is not None:
        pg_losses3 = -adv * clip_ratio_c
        negative = adv < 0
        dual_clipped = negative & (clipped_losses > pg_losses3)
        pg_losses = torch.where(negative, torch.minimum(clipped_losses, pg_losses3), clipped_losses)
    else:
        dual_clipped = torch.zeros_like(mask)
        pg_losses = clipped_losses

    loss = agg_loss(pg_losses, mask, loss_agg_mode, global_normaliser, max_response_length)

    with torch.no_grad():
        neg_log_ratio = -log_ratio
        metrics = {
            "pg_clipfrac": masked_mean(clipped.to(logp.dtype), mask),
            "pg_clipfrac_lower": masked_mean(dual_clipped.to(logp.dtype), mask),
            "ppo_kl": masked_mean(neg_log_ratio, mask),
            "ppo_kl_k3": masked_mean(ratio - 1.0 - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": _masked_extreme(ratio, mask, largest=True),
            "ratio_min": _masked_extreme(ratio, mask, largest=False),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


def compute_actor_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                       response_mask: torch.Tensor, *, ref_log_prob: torch.Tensor | None = None,
                       entropy: torch.Tensor | None = None, clip_ratio: float = 0.2,
                       clip_ratio_low: float | None = None, clip_ratio_high: float | None = None,
                       clip_ratio_c: float | None = None, entropy_coeff: float = 0.0, use_kl_loss: bool = False,
                       kl_loss_coef: float = 0.0, kl_loss_type: str = "low_var_kl",
                       loss_agg_mode: str = "token-mean", global_normaliser: Normaliser = None,
                       max_response_length: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO actor loss for one micro-batch (verl `dp_actor.update_policy` order):

        loss = pg_loss - entropy_coeff * agg(H) + kl_loss_coef * agg(KL(pi_theta || pi_ref))   [if use_kl_loss]

    All three terms share loss_agg_mode and global_normaliser. `entropy` is the per-token entropy [batch, seq]
    (entropy_from_logits) and is required when entropy_coeff != 0; ref_log_prob when use_kl_loss.
    Returns (loss, metrics): compute_policy_loss's metrics plus pg_loss, and entropy / kl_loss when given.
    """
    pg_loss, metrics = compute_policy_loss(old_log_prob, log_prob, advantages, response_mask, clip_ratio,
                                           clip_ratio_low, clip_ratio_high, clip_ratio_c, loss_agg_mode,
                                           global_normaliser, max_response_length)
    metrics["pg_loss"] = pg_loss.detach()
    loss = pg_loss
    if entropy_coeff != 0.0:
        if entropy is None:
            raise ValueError("entropy_coeff != 0 needs the per-token entropy")
        bonus = entropy_bonus(entropy, response_mask, entropy_coeff, loss_agg_mode, global_normaliser,
                              max_response_length)
        loss = loss + bonus
    if entropy is not None:  # logged as a local token-mean whatever loss_agg_mode is, like the other metrics
        metrics["entropy"] = masked_mean(entropy.detach(), response_mask.bool())
    if use_kl_loss:
        if ref_log_prob is None:
            raise ValueError("use_kl_loss needs ref_log_prob")
        kl = kl_loss(log_prob, ref_log_prob.detach(), response_mask, kl_loss_type, loss_agg_mode,
                     global_normaliser, max_response_length)
        loss = loss + kl_loss_coef * kl
        metrics["kl_loss"] = kl.detach()
    return loss, metrics
