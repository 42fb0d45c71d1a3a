"""DAPO dynamic sampling (arXiv:2503.14476, section 3.2): keep only prompt groups with reward variance.

A group whose n responses all score the same (all wrong or all right) has A = 0 for every token under GRPO,
so it contributes no policy gradient but still dilutes the batch (and, under token-mean, the normaliser).
DAPO over-samples and keeps generating until it has enough groups with a non-zero spread.
(verl: `algorithm.filter_groups.enable / metric / max_num_gen_batches`.)

"Zero spread" is tested as max == min, not std > 0: the fp std of [0.1, 0.1, 0.1] (fp64) comes out as ~1e-17,
and such a group must still be dropped.

This module is bookkeeping only: it never generates. The trainer loop (mindrl/trainer/grpo.py) is

    buf = DynamicSamplingBuffer(target_num_groups=groups_per_rank, max_num_gen_batches=10)
    while buf.can_generate:
        groups, metric = generate_and_score(round=buf.num_rounds)
        buf.add(groups, filter_groups(metric, n_samples_per_prompt=n))
    batch = buf.take()                     # short if the cap was reached: train on what there is

Reaching the cap short of the target is not an error: verl aborts the run there, which users complain about;
here the step trains on the partial batch and the trainer warns and reports it.
"""
from __future__ import annotations

from typing import Generic, Sequence, TypeVar

import torch

from .advantages import GroupIndex, group_ids

T = TypeVar("T")


def filter_groups(metric: torch.Tensor | Sequence[float], group_index: GroupIndex | None = None,
                  n_samples_per_prompt: int | None = None, *, keep_singletons: bool = False) -> torch.Tensor:
    """Which groups to keep: bool [G], True where the group's metric (reward, acc, ...) is not all equal.

    metric: [N] per-sample values; groups from `group_index` (any hashable keys, numbered by first appearance)
    or contiguous blocks of `n_samples_per_prompt`. `keep_singletons=True` keeps groups of one sample (verl
    keeps them); the default drops them, because their GRPO advantage is 0 here (see advantages.py).
    Use `sample_keep_mask` to turn the result into a per-sample mask.
    """
    values = torch.as_tensor(metric).detach().flatten()
    if not values.is_floating_point():  # bool / int accuracies; equality is exact in any float dtype
        values = values.float()
    gid, num_groups = group_ids(values.numel(), group_index, n_samples_per_prompt, device=values.device)
    gmax = values.new_full((num_groups,), -torch.inf).scatter_reduce(0, gid, values, "amax")
    gmin = values.new_full((num_groups,), torch.inf).scatter_reduce(0, gid, values, "amin")
    keep = gmax != gmin
    if keep_singletons:
        counts = gid.new_zeros(num_groups).index_add(0, gid, torch.ones_like(gid))
        keep |= counts == 1
    return keep


def sample_keep_mask(group_keep: torch.Tensor, group_index: GroupIndex | None = None,
                     n_samples_per_prompt: int | None = None, num_samples: int | None = None) -> torch.Tensor:
    """Per-group keep [G] -> per-sample keep [N], same grouping arguments as `filter_groups`."""
    if num_samples is None:
        if group_index is None:
            if n_samples_per_prompt is None:
                raise ValueError("pass group_index, or n_samples_per_prompt")
            num_samples = group_keep.numel() * n_samples_per_prompt
        else:
            num_samples = len(group_index)
    gid, num_groups = group_ids(num_samples, group_index, n_samples_per_prompt, device=group_keep.device)
    if num_groups != group_keep.numel():
        raise ValueError(f"group_keep has {group_keep.numel()} entries for {num_groups} groups")
    return group_keep.bool()[gid]


class DynamicSamplingBuffer(Generic[T]):
    """Accumulates kept groups over generation rounds until `target_num_groups` are collected.

    A "group" is whatever the caller uses for one prompt's n responses (a dict, an index list, ...); this class
    never looks inside. `max_num_gen_batches` caps the rounds (0 = no cap, as verl); at the cap `take` returns
    what there is (fewer than the target; the caller reports it). Surplus kept groups beyond the target are
    dropped by `take`, as in DAPO/verl (they are not carried over to the next step, whose policy is newer).
    """

    def __init__(self, target_num_groups: int, max_num_gen_batches: int = 0) -> None:
        if target_num_groups <= 0:
            raise ValueError(f"target_num_groups must be > 0, got {target_num_groups}")
        if max_num_gen_batches < 0:
            raise ValueError(f"max_num_gen_batches must be >= 0 (0 = unlimited), got {max_num_gen_batches}")
        self.target_num_groups = target_num_groups
        self.max_num_gen_batches = max_num_gen_batches
        self.groups: list[T] = []
        self.num_rounds = 0
        self.num_seen = 0  # groups offered, kept or not (for the "kept fraction" metric)

    @property
    def is_full(self) -> bool:
        return len(self.groups) >= self.target_num_groups

    @property
    def can_generate(self) -> bool:
        """True while more rounds are both needed and allowed."""
        return not self.is_full and (self.max_num_gen_batches == 0 or self.num_rounds < self.max_num_gen_batches)

    def add(self, groups: Sequence[T], keep: torch.Tensor | Sequence[bool]) -> int:
        """Record one generation round: keep groups[g] where keep[g]. Returns how many were kept."""
        keep_list = [bool(k) for k in (keep.tolist() if isinstance(keep, torch.Tensor) else keep)]
        if len(keep_list) != len(groups):
            raise ValueError(f"{len(groups)} groups but {len(keep_list)} keep flags")
        kept = [g for g, k in zip(groups, keep_list) if k]
        self.groups.extend(kept)
        self.num_rounds += 1
        self.num_seen += len(groups)
        return len(kept)

    def take(self, limit: int | None = None) -> list[T]:
        """The first min(target_num_groups, limit) kept groups (fewer if the cap was reached); resets the buffer."""
        out = self.groups[: self.target_num_groups if limit is None else min(self.target_num_groups, limit)]
        self.groups, self.num_rounds, self.num_seen = [], 0, 0
        return out

    def metrics(self) -> dict[str, float]:
        """num_gen_batches (rounds so far) and kept_group_frac (kept / offered); call before `take`."""
        return {"num_gen_batches": float(self.num_rounds),
                "kept_group_frac": len(self.groups) / self.num_seen if self.num_seen else 0.0}
