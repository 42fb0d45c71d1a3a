"""`rl_config.policy_loss` (gspo, cispo; vanilla is tests/algorithms/test_losses.py) and rollout importance
sampling, against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from mindrl.algorithms import POLICY_LOSSES, compute_actor_loss, rollout_is_weights


def test_registry():
    assert set(POLICY_LOSSES) == {"vanilla", "gspo", "cispo"}
    with pytest.raises(ValueError, match="policy_loss"):
        compute_actor_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), policy_loss="ppo2")


def test_gspo_sequence_ratio_by_hand():
    old = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    logp = torch.tensor([[-0.9, -2.1, -5.0], [-0.7, -0.8, -0.9]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([1.0, 1.0], dtype=torch.float64)
    # row 0: token log-ratios +0.1, -0.1 -> mean 0 -> s = 1 (inside the clip range)
    # row 1: +0.3, +0.2, +0.1 -> mean 0.2 -> s = e^0.2 = 1.2214 > 1 + 0.2: clipped to 1.2, the whole sequence
    s1 = math.exp(0.2)
    loss, metrics = POLICY_LOSSES["gspo"](old, logp, adv, mask, 0.2, loss_agg_mode="seq-mean-token-mean")
    assert loss.item() == pytest.approx((-1.0 + -1.2) / 2)
    assert metrics["ratio_max"].item() == pytest.approx(s1) and metrics["ratio_min"].item() == pytest.approx(1.0)
    assert metrics["pg_clipfrac"].item() == pytest.approx(3 / 5)  # the 3 tokens of row 1
    loss.backward()
    # unclipped row 0: d/dlogp_t of (1/G)(1/|y|) sum_t -A s = -A s / (G |y|) = -1/4; clipped row 1: 0
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, -0.25, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64))

    # with clip-higher room the second sequence is not clipped: loss -(1 + e^0.2)/2, grad -s1/(2*3) per token
    logp.grad = None
    loss, _ = POLICY_LOSSES["gspo"](old, logp, adv, mask, 0.2, clip_ratio_high=0.3, loss_agg_mode="seq-mean-token-mean")
    assert loss.item() == pytest.approx(-(1 + s1) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad[1], torch.full((3,), -s1 / 6, dtype=torch.float64))


def test_gspo_refuses_dual_clip():
    with pytest.raises(ValueError, match="dual-clip"):
        POLICY_LOSSES["gspo"](torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), clip_ratio_c=3.0)


def test_cispo_clips_the_weight_and_keeps_the_gradient():
    old = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    logp = torch.tensor([[-0.5, -1.2]], dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.bool)
    # ratios e^0.5 = 1.6487 -> clipped to 1 + 0.28; e^-0.2 = 0.8187 stays (lower bound 0.8)
    w = [1.28, math.exp(-0.2)]
    loss, metrics = POLICY_LOSSES["cispo"](old, logp, torch.tensor([1.0], dtype=torch.float64), mask, 0.2,
                                           clip_ratio_high=0.28)
    assert loss.item() == pytest.approx((-w[0] * -0.5 + -w[1] * -1.2) / 2)
    assert metrics["pg_clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    # the clipped token still learns (PPO would give it 0): grad = -A w / #tokens
    torch.testing.assert_close(logp.grad, torch.tensor([[-w[0] / 2, -w[1] / 2]], dtype=torch.float64))


def test_rollout_is_weights_token_and_sequence():
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    rollout = torch.tensor([[-1.5, -0.5, -7.0]])
    mask = torch.tensor([[True, True, False]])
    w, m = rollout_is_weights(old, rollout, mask, "token", threshold=1.5)
    torch.testing.assert_close(w, torch.tensor([[1.5, math.exp(-0.5), 0.0]]))  # e^0.5 = 1.65 truncated at 1.5
    assert m["rollout_is_clipfrac"].item() == pytest.approx(0.5)
    w, _ = rollout_is_weights(old, rollout, mask, "sequence", threshold=1.5)
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.0, 0.0]]))  # exp(0.5 - 0.5) for both tokens
    with pytest.raises(ValueError):
        rollout_is_weights(old, rollout, mask, "geometric", 2.0)


def test_actor_loss_applies_rollout_is_to_the_policy_term():
    old = torch.tensor([[-1.0, -1.0]])
    logp = old.clone().requires_grad_(True)  # ratio 1: vanilla per-token loss is -A = -1
    rollout = torch.tensor([[-1.5, -0.5]])
    loss, metrics = compute_actor_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool),
                                       rollout_log_prob=rollout, rollout_is_threshold=1.5)
    assert loss.item() == pytest.approx(-(1.5 + math.exp(-0.5)) / 2)
    assert metrics["rollout_is_mean"].item() == pytest.approx((1.5 + math.exp(-0.5)) / 2)
    with pytest.raises(ValueError, match="rollout_log_prob"):
        compute_actor_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), rollout_is_threshold=1.5)
