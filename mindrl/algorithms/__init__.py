"""mindrl.algorithms: the pure tensor math of one GRPO step.

Owns: the advantage estimators (GRPO, Dr.GRPO, RLOO, REINFORCE++, pass@k), KL estimators, penalties and
controllers, the policy losses (PPO / DAPO clip-higher / dual-clip, GSPO, CISPO) with rollout importance
sampling, loss aggregation modes, entropy, DAPO dynamic sampling and overlong filtering. Formulas, config
keys and how to add an estimator: docs/algorithms.md.

Rules for this package: functions take tensors and return tensors (no model, no I/O, no distributed calls),
and it imports only torch and the standard library, nothing else from mindrl, so it can be tested and
reused on its own. Registries are plain dicts name -> function; adding an entry is one line.
"""
from .advantages import (
    ADVANTAGE_ESTIMATORS,
    broadcast_to_tokens,
    compute_drgrpo_outcome_advantage,
    compute_grpo_outcome_advantage,
    compute_grpo_passk_outcome_advantage,
    compute_reinforce_plus_plus_baseline_outcome_advantage,
    compute_reinforce_plus_plus_outcome_advantage,
    compute_rloo_outcome_advantage,
    get_advantage_estimator,
    group_ids,
    group_norm_advantages,
    masked_whiten,
    scores_on_last_token,
    sequence_scores,
)
from .aggregation import (
    LOSS_AGGREGATIONS,
    agg_loss,
    loss_normaliser,
    masked_mean,
    masked_sum,
    seq_mean_token_mean,
    seq_mean_token_sum,
    seq_mean_token_sum_norm,
    token_mean,
)
from .entropy import entropy_bonus, entropy_from_logits, entropy_from_logprobs, entropy_loss
from .filtering import DynamicSamplingBuffer, filter_groups, sample_keep_mask
from .kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    apply_kl_penalty,
    estimate_kl,
    kl_abs,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_loss,
)
from .losses import (
    POLICY_LOSSES,
    compute_actor_loss,
    compute_policy_loss,
    compute_policy_loss_cispo,
    compute_policy_loss_gspo,
    logprob_diff_stats,
    rollout_is_clipfrac_weight,
    rollout_is_weights,
)
from .overlong import overlong_filter_mask, truncated_from_finish_reasons

__all__ = [
    "ADVANTAGE_ESTIMATORS", "KL_ESTIMATORS", "LOSS_AGGREGATIONS", "POLICY_LOSSES",
    "AdaptiveKLController", "DynamicSamplingBuffer", "FixedKLController",
    "agg_loss", "apply_kl_penalty", "broadcast_to_tokens", "compute_actor_loss",
    "compute_drgrpo_outcome_advantage", "compute_grpo_outcome_advantage", "compute_grpo_passk_outcome_advantage",
    "compute_policy_loss", "compute_policy_loss_cispo", "compute_policy_loss_gspo",
    "compute_reinforce_plus_plus_baseline_outcome_advantage", "compute_reinforce_plus_plus_outcome_advantage",
    "compute_rloo_outcome_advantage", "logprob_diff_stats", "masked_whiten", "rollout_is_clipfrac_weight",
    "rollout_is_weights", "scores_on_last_token",
    "entropy_bonus", "entropy_from_logits", "entropy_from_logprobs", "entropy_loss", "estimate_kl",
    "filter_groups", "get_advantage_estimator", "group_ids", "group_norm_advantages",
    "kl_abs", "kl_k1", "kl_k2", "kl_k3", "kl_loss", "loss_normaliser", "masked_mean", "masked_sum",
    "overlong_filter_mask", "sample_keep_mask", "seq_mean_token_mean", "seq_mean_token_sum",
    "seq_mean_token_sum_norm", "sequence_scores", "token_mean",
    "truncated_from_finish_reasons",
]
