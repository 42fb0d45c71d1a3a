"""Clipped surrogate (PPO / DAPO clip-higher / dual-clip), its metrics and gradients, and the actor loss."""
from __future__ import annotations

import math
import random

import pytest
import torch

from mindrl.algorithms import compute_actor_loss, compute_policy_loss

# one row, old log-probs 0 so that log_prob = log(ratio)
RATIOS = [1.5, 0.5, 1.1, 0.7]
ADV = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
MASK = torch.ones(1, 4)


def logp_for(ratios, dtype=torch.float64):
    return torch.tensor([[math.log(r) for r in ratios]], dtype=dtype).requires_grad_(True)


def test_ratio_one_gives_minus_mean_advantage():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, m = compute_policy_loss(lp, lp.clone(), adv, mask)
    torch.testing.assert_close(loss, torch.tensor(-(1 + 1 + 1 - 2 - 2) / 5))
    loss, _ = compute_policy_loss(lp, lp.clone(), adv, mask, loss_agg_mode="seq-mean-token-mean")
    torch.testing.assert_close(loss, torch.tensor(-(1 - 2) / 2))
    assert m["pg_clipfrac"].item() == 0 and m["ppo_kl"].item() == 0 and m["ratio_mean"].item() == 1


def test_hand_computed_clipping_and_gradient():
    lp = logp_for(RATIOS)
    loss, m = compute_policy_loss(torch.zeros(1, 4, dtype=torch.float64), lp, ADV, MASK, clip_ratio=0.2)
    # per token max(-A r, -A clip(r, .8, 1.2)): [-1.2 (clipped), -0.5, 1.1, 0.8 (clipped)]
    torch.testing.assert_close(loss, torch.tensor((-1.2 - 0.5 + 1.1 + 0.8) / 4, dtype=torch.float64))
    assert m["pg_clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    # d(-A r)/dlogp = -A r on unclipped tokens; clipped tokens get exactly zero
    expected = torch.tensor([[0.0, -0.5 / 4, 1.1 / 4, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(lp.grad, expected)
    assert lp.grad[0, 0].item() == 0.0 and lp.grad[0, 3].item() == 0.0


def test_metrics_hand_values():
    lp = logp_for(RATIOS)
    _, m = compute_policy_loss(torch.zeros(1, 4, dtype=torch.float64), lp, ADV, MASK)
    logs = [math.log(r) for r in RATIOS]
    assert m["ppo_kl"].item() == pytest.approx(-sum(logs) / 4)
    assert m["ppo_kl_k3"].item() == pytest.approx(sum(r - 1 - math.log(r) for r in RATIOS) / 4)
    assert m["ppo_kl_k3"].item() >= 0
    assert m["ratio_mean"].item() == pytest.approx(sum(RATIOS) / 4)
    assert m["ratio_max"].item() == pytest.approx(1.5) and m["ratio_min"].item() == pytest.approx(0.5)
    assert all(not v.requires_grad for v in m.values())


def test_clip_higher_is_asymmetric():
    old = torch.zeros(1, 2, dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0]])
    lp = logp_for([1.25, 0.75])
    sym, m_sym = compute_policy_loss(old, lp, adv, torch.ones(1, 2), clip_ratio=0.2)
    # symmetric 0.2: both clipped -> [-1.2, 0.8]
    torch.testing.assert_close(sym, torch.tensor((-1.2 + 0.8) / 2, dtype=torch.float64))
    assert m_sym["pg_clipfrac"].item() == 1.0
    asym, m_asym = compute_policy_loss(old, lp, adv, torch.ones(1, 2), clip_ratio=0.2, clip_ratio_high=0.28)
    # DAPO 0.2 / 0.28: 1.25 < 1.28 is no longer clipped -> [-1.25, 0.8]
    torch.testing.assert_close(asym, torch.tensor((-1.25 + 0.8) / 2, dtype=torch.float64))
    assert m_asym["pg_clipfrac"].item() == 0.5
    low, _ = compute_policy_loss(old, lp, adv, torch.ones(1, 2), clip_ratio=0.2, clip_ratio_low=0.3)
    torch.testing.assert_close(low, torch.tensor((-1.2 + 0.75) / 2, dtype=torch.float64))


def test_dual_clip_caps_negative_advantages():
    old = torch.zeros(1, 3, dtype=torch.float64)
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    lp = logp_for([5.0, 2.0, 5.0])
    plain, m_plain = compute_policy_loss(old, lp, adv, torch.ones(1, 3))
    # no dual clip: [5, 2, -1.2]
    torch.testing.assert_close(plain, torch.tensor((5 + 2 - 1.2) / 3, dtype=torch.float64))
    assert m_plain["pg_clipfrac_lower"].item() == 0
    lp2 = logp_for([5.0, 2.0, 5.0])
    dual, m = compute_policy_loss(old, lp2, adv, torch.ones(1, 3), clip_ratio_c=3.0)
    # token 0 capped at -A * c = 3; token 1 (2 < 3) untouched; positive A never dual-clipped
    torch.testing.assert_close(dual, torch.tensor((3 + 2 - 1.2) / 3, dtype=torch.float64))
    assert m["pg_clipfrac_lower"].item() == pytest.approx(1 / 3)
    dual.backward()
    torch.testing.assert_close(lp2.grad, torch.tensor([[0.0, 2.0 / 3, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError):
        compute_policy_loss(old, lp2, adv, torch.ones(1, 3), clip_ratio_c=1.0)


def test_clip_fraction_matches_a_plain_loop():
    rng = random.Random(1)
    rows, cols, low, high = 5, 9, 0.2, 0.28
    ratios = [[math.exp(rng.uniform(-0.6, 0.6)) for _ in range(cols)] for _ in range(rows)]
    advs = [[rng.choice([-1.0, 0.0, 0.5, 2.0])] * cols for _ in range(rows)]
    mask = [[int(rng.random() < 0.7) for _ in range(cols)] for _ in range(rows)]
    clipped = n = 0
    for i in range(rows):
        for t in range(cols):
            if mask[i][t]:
                n += 1
                a, r = advs[i][t], ratios[i][t]
                clipped += (a > 0 and r > 1 + high) or (a < 0 and r < 1 - low)
    lp = torch.tensor(ratios, dtype=torch.float64).log()
    _, m = compute_policy_loss(torch.zeros_like(lp), lp, torch.tensor(advs), torch.tensor(mask),
                               clip_ratio=low, clip_ratio_high=high)
    assert clipped > 0
    assert m["pg_clipfrac"].item() == pytest.approx(clipped / n)


def test_gradcheck_unclipped_region():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(3, 4, generator=g, dtype=torch.float64)
    lp = (old + 0.05 * torch.randn(3, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    adv = torch.randn(3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert torch.autograd.gradcheck(lambda x: compute_policy_loss(old, x, adv, mask, loss_agg_mode=mode)[0],
                                        (lp,))


def test_log_ratio_clamped_before_exp():
    old = torch.tensor([[-100.0, 0.0]])
    lp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    loss, m = compute_policy_loss(old, lp, torch.tensor([-1.0]), torch.ones(1, 2))
    assert torch.isfinite(loss) and m["ratio_max"].item() == pytest.approx(math.exp(20), rel=1e-5)
    loss.backward()
    assert torch.isfinite(lp.grad).all()


def test_advantage_1d_broadcasts():
    g = torch.Generator().manual_seed(2)
    old, lp = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    mask = torch.ones(2, 3)
    a1, _ = compute_policy_loss(old, lp, torch.tensor([0.5, -1.0]), mask)
    a2, _ = compute_policy_loss(old, lp, torch.tensor([[0.5] * 3, [-1.0] * 3]), mask)
    torch.testing.assert_close(a1, a2)


def test_empty_mask_no_nan():
    lp = torch.randn(2, 3, requires_grad=True)
    loss, m = compute_policy_loss(torch.randn(2, 3), lp, torch.ones(2), torch.zeros(2, 3))
    assert loss.item() == 0.0 and all(v.item() == 0.0 for v in m.values())
    loss.backward()
    assert torch.equal(lp.grad, torch.zeros(2, 3))


def test_bf16_inputs():
    lp = logp_for(RATIOS, dtype=torch.float32).detach().bfloat16().requires_grad_(True)
    loss, _ = compute_policy_loss(torch.zeros(1, 4, dtype=torch.bfloat16), lp, ADV.bfloat16(), MASK)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.tensor(0.05), atol=1e-2, rtol=0)  # bf16 log-ratios, ~3 digits
    loss.backward()
    assert lp.grad.dtype == torch.bfloat16 and lp.grad[0, 0] == 0


def test_actor_loss_combines_terms():
    old = torch.zeros(1, 4, dtype=torch.float64)
    ref = torch.tensor([[0.0, -1.0, 0.0, 0.0]], dtype=torch.float64)
    entropy = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    lp = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)  # ratio 1 -> pg = -mean(A)
    loss, m = compute_actor_loss(lp, old, ADV, mask, ref_log_prob=ref, entropy=entropy, entropy_coeff=0.01,
                                 use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="mse")
    pg = -(1 + 1 - 1) / 3
    ent = (1 + 2 + 3) / 3
    kl = (0 + 0.5 + 0) / 3
    torch.testing.assert_close(loss, torch.tensor(pg - 0.01 * ent + 0.1 * kl, dtype=torch.float64))
    assert m["pg_loss"].item() == pytest.approx(pg) and m["kl_loss"].item() == pytest.approx(kl)
    assert m["entropy"].item() == pytest.approx(ent)
    only_pg, m2 = compute_actor_loss(lp, old, ADV, mask)
    torch.testing.assert_close(only_pg, torch.tensor(pg, dtype=torch.float64))
    assert "kl_loss" not in m2
    with pytest.raises(ValueError, match="entropy"):
        compute_actor_loss(lp, old, ADV, mask, entropy_coeff=0.01)
    with pytest.raises(ValueError, match="ref_log_prob"):
        compute_actor_loss(lp, old, ADV, mask, use_kl_loss=True)
