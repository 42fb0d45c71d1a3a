"""Issue 20's cross-check against verl, pinned: GSPO's sequence log-ratio clamp, the sequence-level
`rollout_is_clipfrac`, REINFORCE++'s gamma and pass@k's options, each against verl's formula
transcribed below with its source (verl, volcengine/verl at b178a3cd5), and estimator options nothing uses
refused by name."""
from __future__ import annotations

import math

import pytest
import torch

from mindrl.algorithms import ADVANTAGE_ESTIMATORS, POLICY_LOSSES, agg_loss, rollout_is_weights


def verl_gspo(old_log_prob, log_prob, advantages, response_mask, clip_ratio_low, clip_ratio_high):
    """verl/trainer/ppo/core_algos.py compute_policy_loss_gspo, lines 1286-1314 (b178a3cd5)."""
    negative_approx_kl = log_prob - old_log_prob
    seq_lengths = torch.sum(response_mask, dim=-1).clamp(min=1)
    negative_approx_kl_seq = torch.sum(negative_approx_kl * response_mask, dim=-1) / seq_lengths
    log_seq_importance_ratio = log_prob - log_prob.detach() + negative_approx_kl_seq.detach().unsqueeze(-1)
    log_seq_importance_ratio = torch.clamp(log_seq_importance_ratio, max=10.0)  # line 1298
    seq_importance_ratio = torch.exp(log_seq_importance_ratio)
    pg_losses1 = -advantages * seq_importance_ratio
    pg_losses2 = -advantages * torch.clamp(seq_importance_ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    pg_losses = torch.maximum(pg_losses1, pg_losses2)
    return agg_loss(pg_losses, response_mask, "seq-mean-token-mean")


@pytest.mark.parametrize("m,tokens", [(12.0, 4), (15.0, 1), (9.5, 3)], ids=["m12_4tok", "m15_1tok", "m9.5_below"])
def test_gspo_clamps_the_sequence_log_ratio_at_10_as_verl(m, tokens):
    """A < 0 and a mean token log-ratio m: above 10 the ratio is e^10 and the row has no gradient (verl); a
    bound of 20 gave 3.27e6 at m = 15 and a per-token gradient of 40,689 at m = 12."""
    old = torch.zeros(1, tokens + 1, dtype=torch.float64)
    mask = torch.tensor([[True] * tokens + [False]])
    adv = torch.full((1, tokens + 1), -1.0, dtype=torch.float64)
    ours_logp = torch.full_like(old, m).requires_grad_(True)
    verl_logp = ours_logp.detach().clone().requires_grad_(True)
    ours, metrics = POLICY_LOSSES["gspo"](old, ours_logp, adv, mask, 0.2, loss_agg_mode="seq-mean-token-mean")
    ref = verl_gspo(old, verl_logp, adv, mask.to(old.dtype), 0.2, 0.2)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours.detach(), ref.detach())
    torch.testing.assert_close(ours_logp.grad, verl_logp.grad)
    if m > 10:
        assert ours.item() == pytest.approx(math.exp(10.0))  # 22,026.47 at m = 15 (1 token) and m = 12
        assert torch.count_nonzero(ours_logp.grad) == 0
        assert metrics["ratio_max"].item() == pytest.approx(math.exp(10.0))
    else:
        assert ours.item() == pytest.approx(math.exp(m)) and ours_logp.grad[0, 0].item() == pytest.approx(
            math.exp(m) / tokens)


def verl_seq_fraction_high(old_log_prob, rollout_log_prob, response_mask, threshold):
    """verl/trainer/ppo/rollout_corr_helper.py: compute_rollout_correction_weights (sequence, lines 538-543)
    and compute_is_metrics (lines 635, 650, 652) at b178a3cd5: the fraction of rows, empty ones included."""
    log_ratio = old_log_prob - rollout_log_prob
    log_ratio_sum = (log_ratio * response_mask).sum(-1).unsqueeze(-1)  # verl_F.masked_sum(..., axis=-1)
    log_threshold_upper = torch.log(torch.tensor(threshold))
    exceeds_upper = log_ratio_sum > log_threshold_upper
    return exceeds_upper.float().mean().item()


def test_sequence_level_clipfrac_is_verls_row_fraction():
    """The issue's example (C = 2): rows of different lengths and two empty rows, where the token-weighted
    mean gave 0.361 and verl's row fraction 0.3125."""
    gen = torch.Generator().manual_seed(20)
    lengths = [1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 10, 11, 12, 13, 14, 0]
    mask = torch.arange(16)[None, :] < torch.tensor(lengths)[:, None]
    old = -torch.rand(16, 16, generator=gen)
    rollout = old - 0.3 * torch.randn(16, 16, generator=gen)
    _, metrics = rollout_is_weights(old, rollout, mask, "sequence", threshold=2.0)
    expected = verl_seq_fraction_high(old, rollout, mask.float(), 2.0)
    assert metrics["rollout_is_clipfrac"].item() == pytest.approx(expected)
    # a row fraction: a multiple of 1/16, counting the empty rows in the denominator
    assert (metrics["rollout_is_clipfrac"].item() * 16) == pytest.approx(round(expected * 16))
    log_sum = torch.where(mask, old - rollout, 0.0).sum(-1)
    token_weighted = (mask.sum(-1) * (log_sum > math.log(2.0))).sum() / mask.sum()
    assert 0 < expected < 1 and token_weighted.item() != pytest.approx(expected)  # the two definitions differ here


def test_hand_example_row_fraction():
    old = torch.zeros(4, 3)
    rollout = torch.tensor([[-1.0, 0, 0], [-0.1, -0.1, 0], [0, 0, 0], [-5.0, -5, -5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)  # rows 3, 4 empty
    _, m = rollout_is_weights(old, rollout, mask, "sequence", threshold=2.0)
    # only row 1 (1.0 > log 2; row 4's -5s are masked) of 4 rows; its 2 of 5 tokens was the token-weighted 0.4
    assert m["rollout_is_clipfrac"].item() == pytest.approx(1 / 4)
    _, m = rollout_is_weights(old, rollout, mask, "token", threshold=2.0)
    assert m["rollout_is_clipfrac"].item() == pytest.approx(1 / 5)  # 1 of the 5 response tokens


def verl_reinforce_pp_returns(token_level_rewards, response_mask, gamma):
    """verl/trainer/ppo/core_algos.py compute_reinforce_plus_plus_outcome_advantage, lines 606-613."""
    returns = torch.zeros_like(token_level_rewards)
    running_return = 0
    for t in reversed(range(token_level_rewards.shape[1])):
        running_return = token_level_rewards[:, t] + gamma * running_return
        returns[:, t] = running_return
        running_return = running_return * response_mask[:, t]
    return returns


def test_reinforce_pp_gamma_as_verl():
    gen = torch.Generator().manual_seed(3)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 4, 1, 5])[:, None]
    rewards = torch.where(mask, torch.randn(4, 7, generator=gen), 0.0)
    est = ADVANTAGE_ESTIMATORS["reinforce_plus_plus"]
    _, returns = est(rewards, mask, gamma=0.9)
    expected = verl_reinforce_pp_returns(rewards, mask.float(), 0.9)
    torch.testing.assert_close(returns, torch.where(mask, expected, 0.0))
    _, undiscounted = est(rewards, mask)
    assert not torch.allclose(returns, undiscounted)  # gamma was used, not swallowed
    with pytest.raises(ValueError, match="gamma"):
        est(rewards, mask, gamma=1.5)


def test_passk_options_as_verl_and_norm_adv_by_std_refused():
    """verl core_algos.py compute_grpo_passk_outcome_advantage, lines 409-416: (r_max - r_2nd) / (std + eps).
    verl's norm_adv_by_std_in_grpo=false has no counterpart here (dr_grpo is the one way to drop the std), so it
    is refused by name rather than swallowed."""
    scores = torch.tensor([0.0, 1.0, 0.5, 0.0, 2.0, 2.0, 1.0, 3.0])
    mask = torch.ones(8, 2, dtype=torch.bool)
    est = ADVANTAGE_ESTIMATORS["grpo_passk"]
    adv, _ = est(scores, mask, n_samples_per_prompt=4, epsilon=0.5, std_unbiased=False)
    assert adv[1, 0].item() == pytest.approx(0.5 / (scores[:4].std(unbiased=False).item() + 0.5))
    assert adv[7, 0].item() == pytest.approx(1.0 / (scores[4:].std(unbiased=False).item() + 0.5))
    with pytest.raises(ValueError, match="adv_estimator=grpo_passk does not accept option 'norm_adv_by_std_in_grpo'"):
        est(scores, mask, n_samples_per_prompt=4, norm_adv_by_std_in_grpo=False)


@pytest.mark.parametrize("name,option", [("reinforce_plus_plus", {"norm_adv_by_std_in_grpo": False}),
                                         ("rloo", {"epsilon": 1e-3}), ("dr_grpo", {"norm_adv_by_std_in_grpo": True}),
                                         ("reinforce_plus_plus_baseline", {"gamma": 0.9}), ("grpo", {"gamma": 0.9}),
                                         ("grpo", {"norm_adv_by_std_in_grpo": False}), ("grpo_passk", {"gama": 1.0})])
def test_an_option_the_estimator_does_not_take_is_refused_by_name(name, option):
    scores = torch.tensor([0.0, 1.0, 1.0, 0.0])
    mask = torch.ones(4, 3, dtype=torch.bool)
    (key,) = option
    with pytest.raises(ValueError, match=f"adv_estimator={name} does not accept option '{key}'"):
        ADVANTAGE_ESTIMATORS[name](scores, mask, n_samples_per_prompt=2, **option)


def test_option_values_are_checked():
    est = ADVANTAGE_ESTIMATORS["grpo"]
    assert est.option_errors({"std_unbiased": "no", "epsilon": 0}, "x.") == [
        "x.std_unbiased='no' must be true or false", "x.epsilon=0 must be a number > 0"]
    assert est.option_errors({"std_unbiased": False, "epsilon": 1e-3}) == []
    assert ADVANTAGE_ESTIMATORS["reinforce_plus_plus"].option_errors({"gamma": 0}) == ["gamma=0 must be a number in "
                                                                                        "(0, 1]"]
