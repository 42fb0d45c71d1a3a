"""The advantage estimators of `rl_config.adv_estimator`, each against a hand-computed example."""
from __future__ import annotations

import math

import pytest
import torch

from mindrl.algorithms import ADVANTAGE_ESTIMATORS, get_advantage_estimator, masked_whiten


def per_seq(adv: torch.Tensor) -> list[float]:
    return adv[:, 0].tolist()


def test_registry_has_the_families_users_ask_for():
    assert {"grpo", "group_norm", "dr_grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline",
            "grpo_passk"} <= set(ADVANTAGE_ESTIMATORS)
    with pytest.raises(ValueError, match="adv_estimator"):
        get_advantage_estimator("gae")


def test_grpo_and_dr_grpo_hand_values():
    scores, mask = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.ones(4, 2)
    std = math.sqrt(0.5)  # unbiased std of [1, 0]: ((0.5)^2 + (0.5)^2) / (2 - 1)
    adv, _ = ADVANTAGE_ESTIMATORS["grpo"](scores, mask, n_samples_per_prompt=2)
    assert per_seq(adv) == pytest.approx([0.5 / (std + 1e-6), -0.5 / (std + 1e-6), 0.0, 0.0])
    adv, _ = ADVANTAGE_ESTIMATORS["dr_grpo"](scores, mask, n_samples_per_prompt=2)
    assert per_seq(adv) == pytest.approx([0.5, -0.5, 0.0, 0.0])


def test_rloo_leave_one_out_baseline():
    # groups: [1, 0, 0, 1] -> +-2/3; [2, 0, 1] -> 2 - 0.5, 0 - 1.5, 1 - 1; [5, 5] constant; [3] singleton
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 1.0, 5.0, 5.0, 3.0])
    ids = ["a"] * 4 + ["b"] * 3 + ["c"] * 2 + ["d"]
    mask = torch.ones(10, 3)
    mask[0, 2] = 0
    adv, returns = ADVANTAGE_ESTIMATORS["rloo"](scores, mask, group_index=ids)
    expected = [2 / 3, -2 / 3, -2 / 3, 2 / 3, 1.5, -1.5, 0.0, 0.0, 0.0, 0.0]
    assert per_seq(adv) == pytest.approx(expected)
    assert adv[0, 2] == 0.0 and torch.equal(adv, returns)


def test_reinforce_plus_plus_returns_and_batch_whitening():
    # outcome scores are placed on each row's last response token; gamma = 1 returns are r at every token
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv, returns = ADVANTAGE_ESTIMATORS["reinforce_plus_plus"](torch.tensor([1.0, 0.0]), mask)
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    # 5 tokens with returns 1, 1, 0, 0, 0: mean 0.4, unbiased var (2 * 0.36 + 3 * 0.16) / 4 = 0.3
    s = math.sqrt(0.3 + 1e-8)
    torch.testing.assert_close(adv, torch.tensor([[0.6 / s, 0.6 / s, 0.0], [-0.4 / s, -0.4 / s, -0.4 / s]]))
    # token-level rewards (a KL penalty on token 1): G_t = sum of the rewards at t and after
    token_rewards = torch.tensor([[0.0, -0.1, 1.0], [0.0, 0.0, 0.0]])
    _, returns = ADVANTAGE_ESTIMATORS["reinforce_plus_plus"](token_rewards, torch.ones(2, 3))
    torch.testing.assert_close(returns, torch.tensor([[0.9, 0.9, 1.0], [0.0, 0.0, 0.0]]))


def test_reinforce_plus_plus_baseline():
    # group means removed first: [1, 0] -> [0.5, -0.5]; [1, 1] -> [0, 0]; 8 tokens, mean 0, var 1/7
    adv, _ = ADVANTAGE_ESTIMATORS["reinforce_plus_plus_baseline"](torch.tensor([1.0, 0.0, 1.0, 1.0]),
                                                                   torch.ones(4, 2), n_samples_per_prompt=2)
    s = math.sqrt(7.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5], [-0.5, -0.5], [0.0, 0.0], [0.0, 0.0]]) * s,
                               rtol=1e-5, atol=1e-6)


def test_grpo_passk_only_the_best_response_learns():
    scores = torch.tensor([0.2, 1.0, 0.0, 0.0, 1.0, 1.0])
    adv, _ = ADVANTAGE_ESTIMATORS["grpo_passk"](scores, torch.ones(6, 1), n_samples_per_prompt=3)
    std = math.sqrt(((0.2 - 0.4) ** 2 + 0.6 ** 2 + 0.4 ** 2) / 2)  # unbiased std of [0.2, 1, 0]
    # group 2: best (1.0, first of the tie) minus second best (1.0) is 0
    assert per_seq(adv) == pytest.approx([0.0, 0.8 / (std + 1e-6), 0.0, 0.0, 0.0, 0.0])


def test_masked_whiten_ignores_padding():
    values = torch.tensor([[1.0, 3.0, float("nan")]])
    out = masked_whiten(values, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(out, torch.tensor([[-1.0, 1.0, 0.0]]) / math.sqrt(2.0 + 1e-8))


def test_whitening_statistics_span_every_rank_through_batch_sum():
    """A rank whose batch_sum adds an identical second rank's sums: the whole batch is the rows twice."""
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv, _ = ADVANTAGE_ESTIMATORS["reinforce_plus_plus"](torch.tensor([1.0, 0.0]), mask, batch_sum=lambda t: 2 * t)
    # 10 tokens with returns 1 (x4) and 0 (x6): mean 0.4, unbiased var (4 * 0.36 + 6 * 0.16) / 9 = 2.4 / 9
    s = math.sqrt(2.4 / 9 + 1e-8)
    torch.testing.assert_close(adv, torch.tensor([[0.6 / s, 0.6 / s, 0.0], [-0.4 / s, -0.4 / s, -0.4 / s]]))
    doubled, _ = ADVANTAGE_ESTIMATORS["reinforce_plus_plus"](torch.tensor([1.0, 0.0, 1.0, 0.0]), mask.repeat(2, 1))
    torch.testing.assert_close(adv, doubled[:2])
    # the baseline variant whitens the same way: [1, 0] -> [0.5, -0.5] per group, 8 tokens twice, var 2 / 15
    adv, _ = ADVANTAGE_ESTIMATORS["reinforce_plus_plus_baseline"](torch.tensor([1.0, 0.0, 1.0, 1.0]),
                                                                   torch.ones(4, 2), n_samples_per_prompt=2,
                                                                   batch_sum=lambda t: 2 * t)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5], [-0.5, -0.5], [0.0, 0.0], [0.0, 0.0]])
                               / math.sqrt(2.0 / 15 + 1e-8), rtol=1e-5, atol=1e-6)
    # group estimators never call it (a prompt's group lives on one rank)
    def refuse(t):
        raise AssertionError("called")
    ADVANTAGE_ESTIMATORS["grpo"](torch.tensor([1.0, 0.0]), torch.ones(2, 2), n_samples_per_prompt=2, batch_sum=refuse)
