"""DAPO dynamic sampling in the trainer: which groups a step trains on, with fake generation rounds.

`collect_groups` is the trainer's round loop (mindrl/trainer/grpo.py); here the rounds are scripted so the
expected kept groups are known by hand, and the DP all-reduce is a plain function.
"""
from __future__ import annotations

import torch

from mindrl.algorithms import filter_groups
from mindrl.trainer.grpo import Group, collect_groups, rollout_seed, trainable_groups


def group(name: str, rewards: list[float]) -> Group:
    return Group(prompt=[len(name)], labels={"name": name}, outputs=[None] * len(rewards),
                 completions=[name] * len(rewards), totals=list(rewards), parts={"acc": list(rewards)})


def keep_informative(groups: list[Group]) -> list[bool]:
    metric = torch.tensor([v for g in groups for v in g.metric("acc")])
    return filter_groups(metric, n_samples_per_prompt=2).tolist()


def scripted(rounds: list[list[Group]], seen: list[int]):
    def make_round(i: int) -> list[Group]:
        seen.append(i)
        return rounds[i]
    return make_round


def test_flat_groups_are_dropped_and_more_rounds_fill_the_batch():
    rounds = [[group("a", [1, 1]), group("b", [0, 1]), group("c", [0, 0])],
              [group("d", [0, 0]), group("e", [1, 0]), group("f", [1, 1])],
              [group("g", [0, 1]), group("h", [1, 0]), group("i", [0, 1])]]
    seen: list[int] = []
    trained, generated, n_rounds, kept = collect_groups(scripted(rounds, seen), keep_informative, target=3,
                                                        max_rounds=5, min_over_dp=lambda k: k)
    # b and e are the informative groups of rounds 0-1; round 2 completes the batch with g, h (i is surplus)
    assert [g.labels["name"] for g in trained] == ["b", "e", "g"]
    assert all(max(g.totals) != min(g.totals) for g in trained)
    assert seen == [0, 1, 2] and n_rounds == 3 and len(generated) == 9
    assert kept == 5  # b, e, g, h, i: the surplus i counts as kept, though not trained


def test_cap_trains_on_a_partial_batch():
    rounds = [[group("a", [1, 1]), group("b", [0, 1])], [group("c", [0, 0]), group("d", [1, 1])]]
    trained, generated, n_rounds, kept = collect_groups(scripted(rounds, []), keep_informative, target=2,
                                                        max_rounds=2, min_over_dp=lambda k: k)
    assert [g.labels["name"] for g in trained] == ["b"] and n_rounds == 2 and len(generated) == 4 and kept == 1


def test_data_parallel_ranks_stop_together_and_train_on_a_common_count():
    # this rank finds 2 informative groups in round 0, the other rank only 1 (the all-reduced min); round 1
    # gives the other rank enough, so both stop after round 1 and train on target = 2 groups
    other_rank_kept = iter([1, 3])
    rounds = [[group("a", [0, 1]), group("b", [1, 0])], [group("c", [0, 1]), group("d", [1, 1])]]
    seen: list[int] = []
    trained, _, n_rounds, _ = collect_groups(scripted(rounds, seen), keep_informative, target=2, max_rounds=4,
                                             min_over_dp=lambda k: min(k, next(other_rank_kept)))
    assert seen == [0, 1] and [g.labels["name"] for g in trained] == ["a", "b"]
    # at the cap with the other rank short by one, this rank trims to the other's count
    other = iter([0, 1])
    trained, _, _, _ = collect_groups(scripted(rounds, []), keep_informative, target=3, max_rounds=2,
                                      min_over_dp=lambda k: min(k, next(other)))
    assert [g.labels["name"] for g in trained] == ["a"]


def test_without_filtering_one_round_is_the_batch():
    rounds = [[group("a", [1, 1]), group("b", [0, 1])]]
    trained, _, n_rounds, _ = collect_groups(scripted(rounds, []), lambda gs: [True] * len(gs), target=2,
                                             max_rounds=1, min_over_dp=lambda k: k)
    assert [g.labels["name"] for g in trained] == ["a", "b"] and n_rounds == 1


def test_trainable_groups_keeps_mini_and_micro_batches_whole():
    # n=4, micro_batch_size=8: a micro-batch is 2 groups; 2 mini-batches -> multiples of 4 groups
    assert trainable_groups(7, n=4, num_mini_batches=2, micro_batch_size=8) == 4
    assert trainable_groups(3, n=4, num_mini_batches=2, micro_batch_size=8) == 0
    assert trainable_groups(5, n=8, num_mini_batches=1, micro_batch_size=4) == 5  # a group is 2 micro-batches
    assert trainable_groups(5, n=6, num_mini_batches=1, micro_batch_size=4) == 4  # 2 groups = 3 micro-batches


def test_trainable_groups_with_token_budget_micro_batches_drops_no_group_for_micro_batch_size():
    """With max_tokens_per_micro_batch the micro-batches are token budgets over any rows: only the mini-batches
    must be equal, so micro_batch_size (8 here, which fixed micro-batches would need whole) trims nothing."""
    assert trainable_groups(3, n=4, num_mini_batches=1, micro_batch_size=8) == 2  # fixed micro-batches: 8 rows
    assert trainable_groups(3, n=4, num_mini_batches=1, micro_batch_size=8, max_tokens_per_micro_batch=256) == 3
    assert trainable_groups(5, n=6, num_mini_batches=1, micro_batch_size=4, max_tokens_per_micro_batch=64) == 5
    assert trainable_groups(7, n=4, num_mini_batches=2, micro_batch_size=8, max_tokens_per_micro_batch=64) == 6


def test_rounds_are_seeded_distinctly():
    seeds = {rollout_seed(1234, step, r) for step in range(1, 50) for r in range(10)}
    assert len(seeds) == 49 * 10
    # round 0: the seed before DAPO (and of DP rank 0 before seeds stopped depending on the DP rank)
    assert rollout_seed(1234, 3, 0) == 1234 * 1_000_003 + 3 * 1_009
