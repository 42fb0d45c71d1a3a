"""Entropy from logits / log-probs, numerically, and the entropy bonus."""
from __future__ import annotations

import math
import random

import pytest
import torch

from mindrl.algorithms import entropy_bonus, entropy_from_logits, entropy_from_logprobs, entropy_loss


def reference_entropy(logits: list[float]) -> float:
    m = max(logits)
    exps = [math.exp(z - m) for z in logits]
    total = sum(exps)
    return -sum(e / total * math.log(e / total) for e in exps if e > 0)


def test_hand_values():
    # p = [1/2, 1/4, 1/4] -> H = 1.5 ln 2;  uniform over 4 -> ln 4;  near one-hot -> ~0
    logits = torch.tensor([[math.log(2.0), 0.0, 0.0, -1e9], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([1.5 * math.log(2), math.log(4)]))
    assert entropy_from_logits(torch.tensor([50.0, 0.0, 0.0])).item() == pytest.approx(0.0, abs=1e-18)


def test_matches_plain_python_loop():
    rng = random.Random(0)
    rows = [[rng.gauss(0, 4) for _ in range(37)] for _ in range(5)]
    out = entropy_from_logits(torch.tensor(rows, dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([reference_entropy(r) for r in rows], dtype=torch.float64))


def test_large_logits_are_stable_and_shift_invariant():
    z = torch.tensor([[0.3, -1.2, 2.0, 0.0]])
    torch.testing.assert_close(entropy_from_logits(z + 1e4), entropy_from_logits(z), atol=1e-3, rtol=0)
    assert torch.isfinite(entropy_from_logits(z * 1e4)).all()


def test_minus_inf_logits_contribute_zero_with_finite_gradient():
    z = torch.tensor([[0.0, -math.inf, 0.0]], requires_grad=True)
    h = entropy_from_logits(z)
    torch.testing.assert_close(h, torch.tensor([math.log(2)]))
    h.sum().backward()
    assert torch.isfinite(z.grad).all()
    lp = torch.log_softmax(torch.tensor([[0.0, -math.inf, 0.0]]), dim=-1).requires_grad_(True)
    h2 = entropy_from_logprobs(lp)
    torch.testing.assert_close(h2, torch.tensor([math.log(2)]))
    h2.sum().backward()
    assert torch.isfinite(lp.grad).all()


def test_logprobs_agree_with_logits_and_gradients_flow():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(entropy_from_logprobs(torch.log_softmax(z, -1)), entropy_from_logits(z))
    assert torch.autograd.gradcheck(entropy_from_logits, (z,))


def test_bf16_logits_fp32_entropy():
    z = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0)).bfloat16()
    out = entropy_from_logits(z)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([reference_entropy(r) for r in z.float().tolist()]))


def test_entropy_bonus_and_loss():
    ent = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    torch.testing.assert_close(entropy_loss(ent, mask), torch.tensor(8 / 3))
    torch.testing.assert_close(entropy_bonus(ent, mask, 0.01), torch.tensor(-0.01 * 8 / 3))
    torch.testing.assert_close(entropy_bonus(ent, mask, 0.01, "seq-mean-token-mean"), torch.tensor(-0.01 * 2.25))
    zero = entropy_bonus(ent.requires_grad_(True), mask, 0.0)
    assert zero.item() == 0.0 and not zero.requires_grad
    assert entropy_bonus(ent, torch.zeros_like(mask), 0.01).item() == 0.0
