"""KL estimators k1/k2/k3/abs, KL loss, KL-in-reward and the KL controllers."""
from __future__ import annotations

import math

import pytest
import torch

from mindrl.algorithms import (KL_ESTIMATORS, AdaptiveKLController, FixedKLController, apply_kl_penalty,
                               estimate_kl, kl_loss)

LOGP = torch.tensor([[-1.0, -2.0, -0.5]])
REF = torch.tensor([[-1.5, -1.0, -0.5]])  # logp - ref = [0.5, -1.0, 0.0]


@pytest.mark.parametrize("name, expected", [
    ("kl", [0.5, -1.0, 0.0]),
    ("k1", [0.5, -1.0, 0.0]),
    ("abs", [0.5, 1.0, 0.0]),
    ("mse", [0.125, 0.5, 0.0]),
    ("k2", [0.125, 0.5, 0.0]),
    # exp(ref - logp) - (ref - logp) - 1 with ref - logp = [-0.5, 1.0, 0.0]
    ("low_var_kl", [math.exp(-0.5) + 0.5 - 1, math.e - 2, 0.0]),
    ("k3", [math.exp(-0.5) + 0.5 - 1, math.e - 2, 0.0]),
])
def test_hand_values(name, expected):
    torch.testing.assert_close(estimate_kl(LOGP, REF, name), torch.tensor([expected]))


@pytest.mark.parametrize("name", sorted(KL_ESTIMATORS))
def test_identical_distributions_give_zero(name):
    lp = torch.randn(3, 7) - 2
    assert torch.equal(estimate_kl(lp, lp.clone(), name), torch.zeros(3, 7))


def test_k3_non_negative_and_clamped():
    g = torch.Generator().manual_seed(0)
    lp, ref = torch.randn(64, 64, generator=g) * 3, torch.randn(64, 64, generator=g) * 3
    assert (estimate_kl(lp, ref, "low_var_kl") >= 0).all()
    # ref - logp = -30 -> clamped to -20 -> exp(-20) + 20 - 1 = 19 -> clamped to 10; +30 would overflow-ish
    far = estimate_kl(torch.tensor([0.0, -30.0]), torch.tensor([-30.0, 0.0]), "low_var_kl")
    assert torch.equal(far, torch.tensor([10.0, 10.0]))
    assert torch.isfinite(far).all()


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        estimate_kl(LOGP, REF, "k4")
    for name in ("low_var_kl", "mse", "kl", "abs"):
        assert name in str(err.value)


def test_bf16_in_fp32_out():
    out = estimate_kl(LOGP.bfloat16(), REF.bfloat16(), "mse")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.125, 0.5, 0.0]]))


def test_kl_loss_token_mean_and_gradient():
    lp = LOGP.clone().requires_grad_(True)
    mask = torch.tensor([[1, 1, 0]])
    loss = kl_loss(lp, REF, mask, kl_loss_type="mse")
    torch.testing.assert_close(loss, torch.tensor((0.125 + 0.5) / 2))
    loss.backward()
    # d/dlogp 0.5 d^2 = d, divided by 2 tokens; masked token gets nothing
    torch.testing.assert_close(lp.grad, torch.tensor([[0.25, -0.5, 0.0]]))


def test_apply_kl_penalty_in_reward():
    scores = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    lp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -2.0, -9.0]])  # k1 = [[.5, 0, -.5], [1, 1, (8 masked)]]
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, current_kl = apply_kl_penalty(scores, lp, ref, mask, kl_coef=0.1, kl_penalty="kl")
    expected = torch.tensor([[-0.05, 0.0, 1.05], [-0.1, 1.9, 0.0]])
    torch.testing.assert_close(rewards, expected)
    # per-seq token-mean KL: [0/3, 2/2] -> batch mean 0.5
    torch.testing.assert_close(current_kl, torch.tensor(0.5))
    assert not rewards.requires_grad


def test_kl_controllers():
    fixed = FixedKLController(0.05)
    fixed.update(10.0, 100)
    assert fixed.value == 0.05
    ctrl = AdaptiveKLController(kl_coef=0.1, target_kl=0.02, horizon=100)
    ctrl.update(current_kl=0.03, n_steps=10)  # error 0.5 -> clipped to 0.2 -> x(1 + 0.2 * 10 / 100)
    assert ctrl.value == pytest.approx(0.1 * 1.02)
    ctrl.update(current_kl=0.019, n_steps=10)  # error -0.05 -> x(1 - 0.005)
    assert ctrl.value == pytest.approx(0.1 * 1.02 * 0.995)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, 0.02, 0)
