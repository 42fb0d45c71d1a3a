"""Policy losses (`policy_loss`: vanilla PPO/GRPO/DAPO clip, gspo, cispo), rollout importance sampling,
and the full actor loss.

Per token, with ratio rho = pi_theta / pi_old = exp(logp - old_logp) and advantage A (PPO, arXiv:1707.06347):

    l1 = -A rho
    l2 = -A clip(rho, 1 - clip_ratio_low, 1 + clip_ratio_high)
    l  = max(l1, l2)                                                   pessimistic bound

`clip_ratio_low` / `clip_ratio_high` default to `clip_ratio`; DAPO (arXiv:2503.14476) "clip-higher" sets
high > low (0.28 / 0.2) so low-probability tokens can still gain mass. Dual-clip (Ye et al. 2020,
arXiv:1912.09729; verl `clip_ratio_c`, default there 3.0): for A < 0 the max() above is unbounded as rho grows,
so it is capped:  l = min(max(l1, l2), -A * clip_ratio_c)  when A < 0.  Here `clip_ratio_c=None` turns it off.

vanilla and cispo clamp the per-token log-ratio to [-20, 20] before exp (verl's SAFETY_BOUND in
rollout_corr_helper.py; its vanilla loss clamps at [-20, 20] too), so a stale or diverged token gives a large but
finite ratio instead of inf / NaN. gspo clamps its sequence log-ratio from above at 10, as verl's
compute_policy_loss_gspo does (GSPO_LOG_RATIO_CLAMP; docs/algorithms.md says why). Everything is computed in fp32
whatever the input dtype.

Metrics (verl names, detached 0-dim tensors, masked token-means over *this* micro-batch; 0 for an empty mask):
    pg_clipfrac        fraction of tokens where the clipped branch is active (l2 > l1)
    pg_clipfrac_lower  fraction of tokens where the dual-clip cap is active (A < 0 and max(l1, l2) > -A c)
    ppo_kl             k1 estimate of KL(pi_old || pi_theta): mean(old_logp - logp)
    ppo_kl_k3          k3 estimate of the same: mean(rho - 1 - log rho), >= 0
    ratio_mean, ratio_max, ratio_min
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .aggregation import Normaliser, agg_loss, lookup, masked_mean, to_acc
from .entropy import entropy_bonus
from .kl import kl_loss

# Per-token log-ratio bound of vanilla / cispo and of the rollout IS weights (verl: +-20, SAFETY_BOUND).
LOG_RATIO_CLAMP = 20.0
# GSPO's sequence log-ratio upper bound: verl core_algos.py compute_policy_loss_gspo,
# `torch.clamp(log_seq_importance_ratio, max=10.0)`. Above it the ratio is the constant e^10 and the sequence
# gets no gradient; a sequence whose *mean* token ratio is e^10 is far off-policy, so dropping it is safer than
# the e^20-scale gradient a bound of 20 would give it when A < 0 (the unclipped branch is active there).
GSPO_LOG_RATIO_CLAMP = 10.0


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
                        max_response_length: int | None = None, is_weights: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped-surrogate policy loss, `policy_loss: vanilla` (formulas in the module docstring); returns
    (loss, metrics).

    old_log_prob, log_prob, response_mask: [batch, seq]; advantages: [batch, seq] or [batch] (broadcast).
    Gradient flows only through log_prob. Tokens whose clipped branch (or dual-clip cap) is active get zero
    gradient, which is the point of clipping. `is_weights` (detached, [batch, seq]) multiplies the per-token
    loss before aggregation (rollout importance sampling, see rollout_is_weights).
    """
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (dual-clip lower bound), got {clip_ratio_c}")
    logp, old, adv, mask = _prepare(old_log_prob, log_prob, advantages, response_mask, low, high)

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

    loss = agg_loss(_weighted(pg_losses, is_weights), mask, loss_agg_mode, global_normaliser, max_response_length)
    return loss, _metrics(ratio.detach(), log_ratio.detach(), clipped, dual_clipped, mask)


def _prepare(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
             response_mask: torch.Tensor, clip_ratio_low: float, clip_ratio_high: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shape checks; (logp fp32, old detached, advantages [batch, seq] detached, bool mask)."""
    if old_log_prob.shape != log_prob.shape or response_mask.shape != log_prob.shape:
        raise ValueError(f"shapes differ: old_log_prob {tuple(old_log_prob.shape)}, log_prob "
                         f"{tuple(log_prob.shape)}, response_mask {tuple(response_mask.shape)}")
    if clip_ratio_low < 0 or clip_ratio_high < 0:
        raise ValueError(f"clip ratios must be >= 0, got low={clip_ratio_low}, high={clip_ratio_high}")
    logp = to_acc(log_prob)
    old = to_acc(old_log_prob).detach().to(logp.dtype)
    adv = to_acc(advantages).detach().to(logp.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    return logp, old, adv.expand_as(logp), response_mask.bool()


def _weighted(pg_losses: torch.Tensor, is_weights: torch.Tensor | None) -> torch.Tensor:
    return pg_losses if is_weights is None else pg_losses * is_weights.detach().to(pg_losses.dtype)


def compute_policy_loss_gspo(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                             response_mask: torch.Tensor, clip_ratio: float = 0.2,
                             clip_ratio_low: float | None = None, clip_ratio_high: float | None = None,
                             clip_ratio_c: float | None = None, loss_agg_mode: str = "seq-mean-token-mean",
                             global_normaliser: Normaliser = None, max_response_length: int | None = None,
                             is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Zheng et al., arXiv:2507.18071), in its GSPO-token form: the importance ratio is per *sequence*,

        s_i   = exp( (1/|y_i|) sum_t (logp_it - old_it) )            (geometric mean of the token ratios)
        s_it  = sg[s_i] * pi(y_it) / sg[pi(y_it)]                    (value s_i, gradient s_i * grad logp_it)
        l_it  = max(-A_it s_it, -A_it clip(s_it, 1 - low, 1 + high))

    With a per-sequence advantage and seq-mean-token-mean this is exactly the paper's sequence objective; the
    whole sequence is clipped or not. The paper's clip ranges are tiny (3e-4 / 4e-4) since s_i is a per-token
    geometric mean. Dual-clip does not apply (clip_ratio_c must be None). Metrics as compute_policy_loss.

    log s_i is clamped from above at GSPO_LOG_RATIO_CLAMP = 10 (verl's bound): a sequence with a mean token
    log-ratio above 10 has s_i = e^10 and no gradient.
    """
    if clip_ratio_c is not None:
        raise ValueError("gspo has no dual-clip; leave clip_ratio_c unset")
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    logp, old, adv, mask = _prepare(old_log_prob, log_prob, advantages, response_mask, low, high)
    token_log_ratio = torch.where(mask, logp - old, torch.zeros_like(logp))
    seq_log_ratio = token_log_ratio.sum(-1) / mask.sum(-1).clamp(min=1).to(logp.dtype)
    log_ratio = (logp - logp.detach() + seq_log_ratio.detach().unsqueeze(-1)).clamp(max=GSPO_LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    pg_losses1 = -adv * ratio
    pg_losses2 = -adv * ratio.clamp(1.0 - low, 1.0 + high)
    pg_losses = torch.maximum(pg_losses1, pg_losses2)
    loss = agg_loss(_weighted(pg_losses, is_weights), mask, loss_agg_mode, global_normaliser, max_response_length)
    return loss, _metrics(ratio.detach(), log_ratio.detach(), pg_losses2 > pg_losses1, torch.zeros_like(mask), mask)


def compute_policy_loss_cispo(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                              response_mask: torch.Tensor, clip_ratio: float = 0.2,
                              clip_ratio_low: float | None = None, clip_ratio_high: float | None = None,
                              clip_ratio_c: float | None = None, loss_agg_mode: str = "token-mean",
                              global_normaliser: Normaliser = None, max_response_length: int | None = None,
                              is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO (MiniMax-M1, arXiv:2506.13585): clip the importance-sampling *weight*, not the update,

        l_t = -sg[clip(rho_t, 1 - low, 1 + high)] * A_t * logp_t

    so every token keeps a gradient (-w A grad logp), bounded by the clipped weight. The paper sets no lower
    bound (clip_ratio_low >= 1) and tunes only the upper one. `pg_clipfrac` counts tokens whose weight was
    clipped. Dual-clip does not apply (clip_ratio_c must be None).
    """
    if clip_ratio_c is not None:
        raise ValueError("cispo has no dual-clip; leave clip_ratio_c unset")
    low = clip_ratio if clip_ratio_low is None else clip_ratio_low
    high = clip_ratio if clip_ratio_high is None else clip_ratio_high
    logp, old, adv, mask = _prepare(old_log_prob, log_prob, advantages, response_mask, low, high)
    log_ratio = (logp.detach() - old).clamp(min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    weight = ratio.clamp(max(1.0 - low, 0.0), 1.0 + high)
    # where(): padded positions may hold -inf log-probs, and 0 * -inf would be NaN.
    safe_logp = torch.where(mask, logp, torch.zeros_like(logp))
    pg_losses = -adv * weight * safe_logp
    loss = agg_loss(_weighted(pg_losses, is_weights), mask, loss_agg_mode, global_normaliser, max_response_length)
    return loss, _metrics(ratio, log_ratio, weight != ratio, torch.zeros_like(mask), mask)


def _metrics(ratio: torch.Tensor, log_ratio: torch.Tensor, clipped: torch.Tensor, dual_clipped: torch.Tensor,
             mask: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        metrics = {
            "pg_clipfrac": masked_mean(clipped.to(ratio.dtype), mask),
            "pg_clipfrac_lower": masked_mean(dual_clipped.to(ratio.dtype), mask),
            "ppo_kl": masked_mean(-log_ratio, mask),
            "ppo_kl_k3": masked_mean(ratio - 1.0 - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": _masked_extreme(ratio, mask, largest=True),
            "ratio_min": _masked_extreme(ratio, mask, largest=False),
        }
    return {k: v.detach() for k, v in metrics.items()}


PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]

# policy_loss -> fn(old_log_prob, log_prob, advantages, response_mask, clip_ratio, clip_ratio_low, clip_ratio_high,
# clip_ratio_c, loss_agg_mode, global_normaliser, max_response_length, is_weights). Add one line.
POLICY_LOSSES: dict[str, PolicyLossFn] = {
    "vanilla": compute_policy_loss,
    "gspo": compute_policy_loss_gspo,
    "cispo": compute_policy_loss_cispo,
}


def rollout_is_weights(old_log_prob: torch.Tensor, rollout_log_prob: torch.Tensor, response_mask: torch.Tensor,
                       level: str = "token", threshold: float = 2.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Truncated importance sampling between the rollout engine and the trainer (TIS; Yao et al. 2025,
    "Your efficient RL framework secretly brings you off-policy RL training").

    The rollout engine (vLLM in bf16, another kernel) samples from pi_rollout, slightly off the trainer's
    pi_old. The policy loss is reweighted by w = min(pi_old / pi_rollout, threshold), detached:

        token     w_t = min(exp(old_t - rollout_t), C)
        sequence  w_i = min(exp(sum_t (old_t - rollout_t)), C)      the same w for every token of sequence i

    Returns (w [batch, seq] fp32, 0 off the mask; metrics):
        rollout_is_mean      masked token-mean of w
        rollout_is_clipfrac  the fraction truncated, as verl's `rollout_is_ratio_fraction_high`
                             (rollout_corr_helper.py compute_is_metrics):
                             token level: of the response tokens, those with old_t - rollout_t > log C;
                             sequence level: of *all* rows, empty ones included, those whose summed
                             log-ratio sum_t (old_t - rollout_t) > log C (a row fraction, not token-weighted).
    The trainer averages them over micro-batches and data-parallel ranks with the same weights: response
    tokens for the token level, rows for the sequence level (`rollout_is_clipfrac_weight`).
    """
    if threshold <= 0:
        raise ValueError(f"rollout_is threshold must be > 0, got {threshold}")
    if level not in ("token", "sequence"):
        raise ValueError(f"rollout_is level must be 'token' or 'sequence', got {level!r}")
    with torch.no_grad():
        mask = response_mask.bool()
        old, rollout = to_acc(old_log_prob).detach(), to_acc(rollout_log_prob).detach().to(to_acc(old_log_prob).dtype)
        log_w = torch.where(mask, old - rollout, torch.zeros_like(old))
        if level == "sequence":
            log_w = log_w.sum(-1, keepdim=True).expand_as(log_w)
        raw = torch.exp(log_w.clamp(min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP))
        weights = torch.where(mask, raw.clamp(max=threshold), torch.zeros_like(raw))
        # Compared in log space (as verl), so the +-20 clamp above cannot hide a truncation.
        exceeds = log_w > math.log(threshold)
        if level == "sequence":  # one verdict per row, every row counted (verl: .float().mean() over rows)
            clipfrac = exceeds[:, 0].to(raw.dtype).mean() if log_w.shape[1] else raw.new_zeros(())
        else:
            clipfrac = masked_mean(exceeds.to(raw.dtype), mask)
        metrics = {"rollout_is_mean": masked_mean(weights, mask), "rollout_is_clipfrac": clipfrac}
    return weights, metrics


def rollout_is_clipfrac_weight(response_mask: torch.Tensor, level: str) -> torch.Tensor:
    """The weight of one micro-batch's `rollout_is_clipfrac` when averaging over micro-batches and ranks:
    its response tokens (token level) or its rows (sequence level), so the average is the batch's fraction."""
    if level == "sequence":
        return torch.tensor(float(response_mask.shape[0]))
    return response_mask.bool().sum().float()


def logprob_diff_stats(log_prob: torch.Tensor, rollout_log_prob: torch.Tensor, response_mask: torch.Tensor
                       ) -> dict[str, torch.Tensor]:
    """|log_prob - rollout_log_prob| on the response tokens, as sums to reduce over micro-batches and ranks:
    {"sum", "count", "max"} (0-dim fp32, detached; max 0 for an empty mask). The trainer logs
    sum / count as rollout/logprob_diff_mean and the max as rollout/logprob_diff_max: how far the rollout
    engine's log-probs are from the training model's on the sampled tokens (verl logs the same comparison
    as training/rollout_probs_diff_*, on probabilities)."""
    with torch.no_grad():
        mask = response_mask.bool()
        diff = (to_acc(log_prob).detach() - to_acc(rollout_log_prob).detach()).abs()
        diff = torch.where(mask, diff, torch.zeros_like(diff))
        return {"sum": diff.sum().float(), "count": mask.sum().float(), "max": diff.max().float() if diff.numel()
                else torch.zeros(())}


def compute_actor_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                       response_mask: torch.Tensor, *, ref_log_prob: torch.Tensor | None = None,
                       entropy: torch.Tensor | None = None, policy_loss: str = "vanilla", clip_ratio: float = 0.2,
                       clip_ratio_low: float | None = None, clip_ratio_high: float | None = None,
                       clip_ratio_c: float | None = None, entropy_coeff: float = 0.0, use_kl_loss: bool = False,
                       kl_loss_coef: float = 0.0, kl_loss_type: str = "low_var_kl",
                       loss_agg_mode: str = "token-mean", global_normaliser: Normaliser = None,
                       max_response_length: int | None = None, rollout_log_prob: torch.Tensor | None = None,
                       rollout_is_level: str = "token", rollout_is_threshold: float | None = None,
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The actor loss for one micro-batch (verl `dp_actor.update_policy` order):

        loss = pg_loss - entropy_coeff * agg(H) + kl_loss_coef * agg(KL(pi_theta || pi_ref))   [if use_kl_loss]

    pg_loss is POLICY_LOSSES[policy_loss]; with `rollout_is_threshold` set, its per-token terms are reweighted
    by rollout_is_weights(old_log_prob, rollout_log_prob) first. All three terms share loss_agg_mode and
    global_normaliser. `entropy` is the per-token entropy [batch, seq] (entropy_from_logits) and is required
    when entropy_coeff != 0; ref_log_prob when use_kl_loss; rollout_log_prob when rollout_is_threshold is set.
    Returns (loss, metrics): the policy loss's metrics plus pg_loss, and entropy / kl_loss / rollout_is_* when
    they apply.
    """
    is_weights, is_metrics = None, {}
    if rollout_is_threshold is not None:
        if rollout_log_prob is None:
            raise ValueError("rollout_is_threshold needs rollout_log_prob (the rollout engine's log-probs)")
        is_weights, is_metrics = rollout_is_weights(old_log_prob, rollout_log_prob, response_mask,
                                                    rollout_is_level, rollout_is_threshold)
    loss_fn = lookup(POLICY_LOSSES, policy_loss, "policy_loss")
    pg_loss, metrics = loss_fn(old_log_prob, log_prob, advantages, response_mask, clip_ratio, clip_ratio_low,
                               clip_ratio_high, clip_ratio_c, loss_agg_mode, global_normaliser, max_response_length,
                               is_weights=is_weights)
    metrics.update(is_metrics)
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
