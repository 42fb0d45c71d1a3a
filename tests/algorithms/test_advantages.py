"""GRPO / Dr.GRPO group-normalised advantages against hand-computed values and a plain-Python reference."""
from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

from mindrl.algorithms import (ADVANTAGE_ESTIMATORS, broadcast_to_tokens, compute_grpo_outcome_advantage,
                               get_advantage_estimator, group_ids, group_norm_advantages)

EPS = 1e-6


def reference(rewards: list[float], keys: list, norm: bool, unbiased: bool) -> list[float]:
    """Obviously-correct loop: stdlib statistics, one group at a time."""
    out = []
    for r, k in zip(rewards, keys):
        group = [x for x, kk in zip(rewards, keys) if kk == k]
        if len(group) == 1 or max(group) == min(group):
            out.append(0.0)
            continue
        mean = statistics.fmean(group)
        std = statistics.stdev(group) if unbiased else statistics.pstdev(group)
        out.append((r - mean) / (std + EPS) if norm else r - mean)
    return out


def test_hand_values_unbiased_std():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0])
    # group 0: mean 0.5, unbiased std sqrt(1/3); group 1: mean 2.75, unbiased var 6.75/3 = 2.25, std 1.5
    a = 0.5 / (math.sqrt(1 / 3) + EPS)
    expected = torch.tensor([a, -a, -a, a, -0.75 / 1.5, -0.75 / 1.5, -0.75 / 1.5, 2.25 / 1.5])
    torch.testing.assert_close(group_norm_advantages(r, n_samples_per_prompt=4), expected, atol=1e-5, rtol=0)


def test_hand_values_biased_std():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0])
    # biased std: group 0 -> 0.5; group 1 -> sqrt(6.75 / 4)
    s1 = math.sqrt(6.75 / 4)
    expected = torch.tensor([0.5 / 0.5, -1, -1, 1, -0.75 / s1, -0.75 / s1, -0.75 / s1, 2.25 / s1])
    out = group_norm_advantages(r, n_samples_per_prompt=4, std_unbiased=False)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_dr_grpo_is_centred_only():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 5.0])
    out = group_norm_advantages(r, n_samples_per_prompt=4, norm_adv_by_std_in_grpo=False)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, -0.75, -0.75, -0.75, 2.25])
    torch.testing.assert_close(out, expected)


def test_non_contiguous_groups():
    # a: [1, 0] -> mean 0.5, unbiased std sqrt(0.5); b: [3, 5] -> mean 4, std sqrt(2)
    r = torch.tensor([1.0, 3.0, 0.0, 5.0])
    out = group_norm_advantages(r, group_index=["a", "b", "a", "b"])
    expected = torch.tensor([0.5 / (math.sqrt(0.5) + EPS), -1 / (math.sqrt(2) + EPS),
                             -0.5 / (math.sqrt(0.5) + EPS), 1 / (math.sqrt(2) + EPS)])
    torch.testing.assert_close(out, expected)
    # a tensor of prompt ids works the same
    torch.testing.assert_close(group_norm_advantages(r, group_index=torch.tensor([7, 3, 7, 3])), expected)


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("unbiased", [True, False])
def test_matches_plain_python_reference(norm, unbiased):
    rng = random.Random(0)
    keys = [rng.randrange(6) for _ in range(40)]  # uneven, shuffled group sizes
    rewards = [rng.choice([0.0, 1.0, 0.5, rng.gauss(0, 3)]) for _ in keys]
    out = group_norm_advantages(torch.tensor(rewards, dtype=torch.float64), group_index=keys,
                                norm_adv_by_std_in_grpo=norm, std_unbiased=unbiased)
    expected = torch.tensor(reference(rewards, keys, norm, unbiased), dtype=torch.float64)
    torch.testing.assert_close(out, expected)


def test_singletons_and_constant_groups_give_exact_zero():
    assert torch.equal(group_norm_advantages(torch.tensor([3.0, -1.0, 7.0]), n_samples_per_prompt=1),
                       torch.zeros(3))
    # The fp mean of three 0.9s (fp32) or three 0.1s (fp64) is not exactly 0.9 / 0.1: r - mean ~ 1e-8 / 1e-17,
    # std about the same, so (r - mean) / (std + eps) would leave ~1e-2 / ~1e-11 instead of 0.
    for dtype, v in ((torch.float32, 0.9), (torch.float64, 0.1)):
        r = torch.tensor([v, v, v, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0], dtype=dtype)
        assert (r[:3] - r[:3].sum() / 3).abs().max() > 0  # the premise: the naive mean is inexact here
        for unbiased in (True, False):
            out = group_norm_advantages(r, n_samples_per_prompt=3, std_unbiased=unbiased)
            assert torch.equal(out, torch.zeros(9, dtype=dtype)), out
    mixed = group_norm_advantages(torch.tensor([0.0, 0.0, 1.0, 2.0]), group_index=[0, 1, 2, 2])
    assert mixed[:2].eq(0).all() and not torch.isnan(mixed).any() and mixed[3] > 0


def test_bf16_rewards_accumulate_in_fp32():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.bfloat16)
    out = group_norm_advantages(r, n_samples_per_prompt=4)
    assert out.dtype == torch.float32
    a = 0.5 / (math.sqrt(1 / 3) + EPS)
    torch.testing.assert_close(out, torch.tensor([a, -a, -a, a]))


def test_broadcast_per_token_with_mask():
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(broadcast_to_tokens(adv, mask), torch.tensor([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]))


def test_outcome_advantage_from_token_level_rewards():
    # reward on the last response token; the value past the mask must be ignored
    rewards = torch.tensor([[0.0, 1.0, 9.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]])
    adv, returns = compute_grpo_outcome_advantage(rewards, mask, n_samples_per_prompt=2)
    a = 0.5 / (math.sqrt(0.5) + EPS)  # groups [1, 0] and [1, 0]
    expected = torch.tensor([[a, a, 0.0], [-a, -a, -a], [a, a, a], [-a, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected)
    assert torch.equal(adv, returns)
    dr, _ = ADVANTAGE_ESTIMATORS["dr_grpo"](rewards, mask, n_samples_per_prompt=2)
    torch.testing.assert_close(dr, expected / a * 0.5)


def test_registry_and_errors():
    assert get_advantage_estimator("group_norm") is get_advantage_estimator("grpo")
    with pytest.raises(ValueError, match="group_norm"):
        get_advantage_estimator("gae_typo")
    with pytest.raises(ValueError, match="multiple"):
        group_norm_advantages(torch.zeros(5), n_samples_per_prompt=2)
    with pytest.raises(ValueError, match="entries"):
        group_norm_advantages(torch.zeros(4), group_index=[0, 1, 2])
    with pytest.raises(ValueError):
        group_norm_advantages(torch.zeros(4))


def test_group_ids_first_appearance_order():
    ids, n = group_ids(5, ["b", "a", "b", "c", "a"])
    assert ids.tolist() == [0, 1, 0, 2, 1] and n == 3
    ids, n = group_ids(6, n_samples_per_prompt=3)
    assert ids.tolist() == [0, 0, 0, 1, 1, 1] and n == 2
