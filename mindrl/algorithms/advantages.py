"""Group-relative outcome advantages (GRPO, Dr.GRPO).

GRPO (DeepSeekMath, arXiv:2402.03300; DeepSeek-R1) samples n responses per prompt, scores each with one
scalar outcome reward r_i, and uses the group as the baseline:

    A_i = (r_i - mean_g(r)) / (std_g(r) + eps)        adv_estimator: group_norm (MindSpeed-RL) / grpo (verl)
    A_i =  r_i - mean_g(r)                            Dr.GRPO (arXiv:2503.20783): norm_adv_by_std_in_grpo=False

The same A_i is given to every response token (outcome supervision).

Conventions (verl `compute_grpo_outcome_advantage`): eps = 1e-6; std is the unbiased sample std
(`torch.std`, divide by n-1) by default, `std_unbiased=False` gives the biased/population std (divide by n),
as TRL and some GRPO write-ups use. One deliberate difference from verl: a group with n=1, or whose rewards
are all equal, gets A = 0 exactly (verl gives a singleton its raw reward, mean 0 / std 1). With one sample
there is no baseline, so its "advantage" is noise; and exact equality is checked with max == min, so
[0.9, 0.9, 0.9] in fp32 gives 0 rather than the ~1e-2 residue that fp rounding of the mean leaves.
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

import torch

from .aggregation import lookup

GroupIndex = torch.Tensor | Sequence[Hashable]


def group_ids(num_samples: int, group_index: GroupIndex | None = None, n_samples_per_prompt: int | None = None,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, int]:
    """Map each sample to a group id in 0..G-1; returns (ids [num_samples] long, G).

    Either `group_index` (one hashable key per sample, e.g. verl's uid strings or prompt ids; groups need not
    be contiguous) or `n_samples_per_prompt` (samples [p0 x n, p1 x n, ...], contiguous). Groups are numbered
    in order of first appearance, so group g is the g-th distinct prompt seen.
    """
    if group_index is None:
        if n_samples_per_prompt is None or n_samples_per_prompt <= 0:
            raise ValueError("pass group_index, or n_samples_per_prompt > 0")
        if num_samples % n_samples_per_prompt:
            raise ValueError(f"{num_samples} samples is not a multiple of n_samples_per_prompt={n_samples_per_prompt}")
        ids = torch.arange(num_samples, device=device) // n_samples_per_prompt
        return ids, num_samples // n_samples_per_prompt
    # Keys are hashed on the host (one small sync for a device tensor): N is the rollout batch, not tokens.
    keys = group_index.tolist() if isinstance(group_index, torch.Tensor) else list(group_index)
    if len(keys) != num_samples:
        raise ValueError(f"group_index has {len(keys)} entries for {num_samples} samples")
    first_seen: dict[Hashable, int] = {}
    ids_list = [first_seen.setdefault(k, len(first_seen)) for k in keys]
    return torch.tensor(ids_list, dtype=torch.long, device=device), len(first_seen)


def group_norm_advantages(scores: torch.Tensor, group_index: GroupIndex | None = None,
                          n_samples_per_prompt: int | None = None, *, norm_adv_by_std_in_grpo: bool = True,
                          std_unbiased: bool = True, epsilon: float = 1e-6) -> torch.Tensor:
    """Per-sample group-normalised advantages, A = (r - mean_g) / (std_g + eps), or r - mean_g (Dr.GRPO).

    scores: [N] one scalar reward per response. Returns [N] in fp32 (fp64 if scores are fp64), no grad.
    Groups of one sample, and groups whose rewards are all equal, get exactly 0.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [N], got shape {tuple(scores.shape)}")
    with torch.no_grad():
        r = scores.detach().to(torch.float64 if scores.dtype == torch.float64 else torch.float32)
        gid, num_groups = group_ids(r.numel(), group_index, n_samples_per_prompt, device=r.device)
        zeros = torch.zeros(num_groups, dtype=r.dtype, device=r.device)
        counts = zeros.index_add(0, gid, torch.ones_like(r))
        mean = zeros.index_add(0, gid, r) / counts.clamp(min=1.0)
        centred = r - mean[gid]
        # Two-pass variance (sum of squared deviations from the mean): stable for rewards with a large offset.
        sq_dev = zeros.index_add(0, gid, centred * centred)
        dof = counts - 1.0 if std_unbiased else counts
        std = (sq_dev / dof.clamp(min=1.0)).sqrt()
        gmax = torch.full_like(zeros, -torch.inf).scatter_reduce(0, gid, r, reduce="amax")
        gmin = torch.full_like(zeros, torch.inf).scatter_reduce(0, gid, r, reduce="amin")
        constant = gmax == gmin  # n=1 groups are constant too
        adv = centred / (std[gid] + epsilon) if norm_adv_by_std_in_grpo else centred
        return torch.where(constant[gid], torch.zeros_like(adv), adv)


def broadcast_to_tokens(values: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[N] per-sequence values -> [N, T] per-token values, 0 on masked tokens (outcome supervision)."""
    if values.dim() != 1 or response_mask.dim() != 2 or values.shape[0] != response_mask.shape[0]:
        raise ValueError(f"need values [N] and response_mask [N, T], got {tuple(values.shape)}, "
                         f"{tuple(response_mask.shape)}")
    return values.unsqueeze(-1) * response_mask.to(values.dtype)


def sequence_scores(token_level_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[N, T] token-level rewards -> [N] scores (sum over response tokens); [N] passes through."""
    if token_level_rewards.dim() == 1:
        return token_level_rewards
    mask = response_mask.bool()
    r = token_level_rewards.to(torch.float64 if token_level_rewards.dtype == torch.float64 else torch.float32)
    return torch.where(mask, r, torch.zeros_like(r)).sum(dim=-1)


def compute_grpo_outcome_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                                   group_index: GroupIndex | None = None, n_samples_per_prompt: int | None = None,
                                   *, norm_adv_by_std_in_grpo: bool = True, std_unbiased: bool = True,
                                   epsilon: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO outcome advantages broadcast per token; returns (advantages [N, T], returns [N, T]).

    token_level_rewards: [N, T] (summed over masked tokens to one score, as verl does; a KL-in-reward penalty
    therefore enters as its sequence sum) or [N] scores. For outcome-only GRPO, returns == advantages
    (verl's convention; there is no critic to regress onto returns).
    """
    scores = sequence_scores(token_level_rewards, response_mask)
    adv = group_norm_advantages(scores, group_index, n_samples_per_prompt,
                                norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
                                std_unbiased=std_unbiased, epsilon=epsilon)
    adv = broadcast_to_tokens(adv, response_mask)
    return adv, adv


def compute_drgrpo_outcome_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                                     group_index: GroupIndex | None = None, n_samples_per_prompt: int | None = None,
                                     **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Dr.GRPO (arXiv:2503.20783): A = r - mean_g(r), no std division (pair with seq-mean-token-sum-norm)."""
    kwargs["norm_adv_by_std_in_grpo"] = False
    return compute_grpo_outcome_advantage(token_level_rewards, response_mask, group_index,
                                          n_samples_per_prompt, **kwargs)


AdvantageFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]

# adv_estimator -> fn(token_level_rewards, response_mask, group_index=None, n_samples_per_prompt=None, **kw)
# returning (advantages [N, T], returns [N, T]). Add one line to add an estimator.
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {
    "group_norm": compute_grpo_outcome_advantage,  # MindSpeed-RL name
    "grpo": compute_grpo_outcome_advantage,  # verl name
    "dr_grpo": compute_drgrpo_outcome_advantage,
}


def get_advantage_estimator(name: str) -> AdvantageFn:
    """ADVANTAGE_ESTIMATORS[name], or a ValueError listing the valid names."""
    return lookup(ADVANTAGE_ESTIMATORS, name, "adv_estimator")
