"""DAPO dynamic sampling: which groups to keep, and the multi-round buffer."""
from __future__ import annotations

import pytest
import torch

from mindrl.algorithms import DynamicSamplingBuffer, filter_groups, sample_keep_mask

REWARDS = torch.tensor([1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0.1, 0.1, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1])


def test_zero_variance_groups_dropped():
    keep = filter_groups(REWARDS, n_samples_per_prompt=4)
    assert keep.tolist() == [False, True, False, False, True]
    assert sample_keep_mask(keep, n_samples_per_prompt=4).tolist() == [False] * 4 + [True] * 4 + [False] * 8 + [True] * 4


def test_fp_noise_does_not_keep_a_constant_group():
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.0, 1.0, 1.0], dtype=torch.float64)
    assert rewards[:3].std() > 0  # the premise: an "std > 0" test would keep this constant group
    assert filter_groups(rewards, n_samples_per_prompt=3).tolist() == [False, True]


def test_non_contiguous_group_index():
    rewards = [1.0, 0.0, 1.0, 1.0, 0.5, 0.5]
    ids = ["p", "q", "p", "q", "r", "r"]  # p: [1, 1] drop; q: [0, 1] keep; r: [.5, .5] drop
    keep = filter_groups(rewards, ids)
    assert keep.tolist() == [False, True, False]
    assert sample_keep_mask(keep, ids).tolist() == [False, True, False, True, False, False]


def test_singletons_and_bool_metric():
    assert filter_groups([1.0, 0.0, 1.0], n_samples_per_prompt=1).tolist() == [False, False, False]
    assert filter_groups([1.0, 0.0, 1.0], n_samples_per_prompt=1, keep_singletons=True).tolist() == [True] * 3
    acc = torch.tensor([True, False, True, True])
    assert filter_groups(acc, n_samples_per_prompt=2).tolist() == [True, False]


def test_buffer_accumulates_until_target_and_drops_surplus():
    buf = DynamicSamplingBuffer[str](target_num_groups=3, max_num_gen_batches=5)
    assert buf.can_generate and not buf.is_full
    assert buf.add(["a", "b", "c"], torch.tensor([True, False, True])) == 2
    assert not buf.is_full and buf.can_generate
    assert buf.add(["d", "e", "f"], [False, True, True]) == 2
    assert buf.is_full and not buf.can_generate
    assert buf.metrics() == {"num_gen_batches": 2.0, "kept_group_frac": 4 / 6}
    assert buf.take() == ["a", "c", "e"]  # "f" is surplus
    assert buf.num_rounds == 0 and not buf.groups


def test_buffer_round_cap_gives_a_partial_batch_not_an_error():
    buf = DynamicSamplingBuffer(target_num_groups=4, max_num_gen_batches=2)
    buf.add([0, 1], [True, False])
    assert buf.can_generate
    buf.add([2, 3], [False, True])
    assert not buf.can_generate and not buf.is_full
    assert buf.take() == [0, 3]  # short of the target: the caller trains on it and reports it


def test_buffer_take_limit():
    buf = DynamicSamplingBuffer(target_num_groups=3)
    buf.add(["a", "b", "c"], [True, True, True])
    assert buf.take(limit=2) == ["a", "b"]


def test_buffer_unlimited_and_errors():
    buf = DynamicSamplingBuffer(target_num_groups=1)  # max_num_gen_batches=0: no cap
    for _ in range(50):
        buf.add([None], [False])
    assert buf.can_generate
    with pytest.raises(ValueError):
        buf.add([1, 2], [True])
    with pytest.raises(ValueError):
        DynamicSamplingBuffer(target_num_groups=0)
    with pytest.raises(ValueError):
        DynamicSamplingBuffer(target_num_groups=1, max_num_gen_batches=-1)
