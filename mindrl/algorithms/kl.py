"""Per-token KL estimators between the policy and the reference model, and the two ways to use them.

With samples y ~ pi (the policy that generated them) and d = log pi(y) - log pi_ref(y), KL(pi || pi_ref) is
estimated per token by (John Schulman, "Approximating KL divergence", 2020; names as verl `kl_penalty`):

    kl  / k1:          d                          unbiased, high variance, can be negative
    abs:               |d|
    mse / k2:          0.5 d^2                    biased, low variance, >= 0
    low_var_kl / k3:   exp(-d) + d - 1            unbiased, low variance, >= 0 (DeepSeekMath / GRPO)

k3 follows verl exactly: -d is clamped to [-20, 20] before exp (no overflow for far-apart policies) and the
result to [-10, 10] (a single outlier token cannot dominate the loss).

Two ways to apply the penalty:
  * in the reward (`algorithm.use_kl_in_reward`, `kl_ctrl`): token_level_rewards = scores - beta * kl, with
    beta from a fixed or adaptive controller; see `apply_kl_penalty`, `FixedKLController`, `AdaptiveKLController`.
  * as a loss term (`actor.use_kl_loss`, `kl_loss_coef`, `kl_loss_type`): loss += kl_loss_coef * agg(kl);
    see `kl_loss`. This is what GRPO / R1 use (k3, coef 0.001 in DeepSeekMath; R1-Zero recipes often use 0).
"""
from __future__ import annotations

from typing import Callable

import torch

from .aggregation import Normaliser, agg_loss, lookup, masked_mean, to_acc


def kl_k1(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """k1 (`kl`): log pi - log pi_ref."""
    return to_acc(log_prob) - to_acc(ref_log_prob)


def kl_abs(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """`abs`: |log pi - log pi_ref|."""
    return (to_acc(log_prob) - to_acc(ref_log_prob)).abs()


def kl_k2(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """k2 (`mse`): 0.5 (log pi - log pi_ref)^2."""
    return 0.5 * (to_acc(log_prob) - to_acc(ref_log_prob)).square()


def kl_k3(log_prob: torch.Tensor, ref_log_prob: torch.Tensor) -> torch.Tensor:
    """k3 (`low_var_kl`): exp(ref - logp) - (ref - logp) - 1, with verl's clamps ([-20, 20] in, [-10, 10] out)."""
    log_ratio = (to_acc(ref_log_prob) - to_acc(log_prob)).clamp(min=-20.0, max=20.0)
    return (torch.exp(log_ratio) - log_ratio - 1.0).clamp(min=-10.0, max=10.0)


KLFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# kl_penalty / kl_loss_type name -> fn(log_prob, ref_log_prob) -> per-token estimate. Add one line.
KL_ESTIMATORS: dict[str, KLFn] = {
    "kl": kl_k1,
    "k1": kl_k1,
    "abs": kl_abs,
    "mse": kl_k2,
    "k2": kl_k2,
    "low_var_kl": kl_k3,
    "k3": kl_k3,
}


def estimate_kl(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, kl_penalty: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL estimate [batch, seq] by name (see KL_ESTIMATORS); fp32. Unknown name -> ValueError."""
    if log_prob.shape != ref_log_prob.shape:
        raise ValueError(f"log_prob {tuple(log_prob.shape)} and ref_log_prob {tuple(ref_log_prob.shape)} differ")
    return lookup(KL_ESTIMATORS, kl_penalty, "kl_penalty")(log_prob, ref_log_prob)



def kl_loss(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, response_mask: torch.Tensor,
            kl_loss_type: str = "low_var_kl", loss_agg_mode: str = "token-mean",
            global_normaliser: Normaliser = None, max_response_length: int | None = None) -> torch.Tensor:
    """KL as a loss term (`use_kl_loss`): agg(kl_estimator(log_prob, ref_log_prob)); multiply by kl_loss_coef.

    Aggregate with the same loss_agg_mode and normaliser as the policy loss so both terms are weighted alike.
    """
    kld = estimate_kl(log_prob, ref_log_prob, kl_loss_type)
    return agg_loss(kld, response_mask, loss_agg_mode, global_normaliser, max_response_length)


def apply_kl_penalty(token_level_scores: torch.Tensor, log_prob: torch.Tensor, ref_log_prob: torch.Tensor,
                     response_mask: torch.Tensor, kl_coef: float,
                     kl_penalty: str = "kl") -> tuple[torch.Tensor, torch.Tensor]:
    """KL in the reward (`use_kl_in_reward`): rewards = scores - kl_coef * kl * mask (verl `apply_kl_penalty`).

    log_prob is the rollout-time (old) policy log-prob. Returns (token_level_rewards [N, T] fp32, current_kl):
    current_kl is the batch mean of per-sequence token-mean KL, the value to feed the KL controller's update.
    No gradient flows: rewards are constants.
    """
    with torch.no_grad():
        kld = estimate_kl(log_prob, ref_log_prob, kl_penalty)
        mask = response_mask.to(kld.dtype)
        kld = torch.where(mask.bool(), kld, torch.zeros_like(kld))
        rewards = to_acc(token_level_scores) - kl_coef * kld
        current_kl = masked_mean(kld, mask, dim=-1).mean() if kld.shape[0] else kld.new_zeros(())
    return rewards, current_kl


class FixedKLController:
    """`kl_ctrl.type: fixed`: beta stays `kl_coef`."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """`kl_ctrl.type: adaptive` (Ziegler et al. 2019, arXiv:1909.08593; as verl):
    beta *= 1 + clip(KL / target_kl - 1, -0.2, 0.2) * n_steps / horizon."""

    def __init__(self, kl_coef: float, target_kl: float, horizon: int) -> None:
        if horizon <= 0 or target_kl <= 0:
            raise ValueError(f"need horizon > 0 and target_kl > 0, got {horizon}, {target_kl}")
        self.value, self.target, self.horizon = float(kl_coef), float(target_kl), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
