"""Outcome advantage estimators: one scalar reward per response -> a per-token advantage.

Every estimator has the signature fn(token_level_rewards [N, T], response_mask [N, T], group_index=None,
n_samples_per_prompt=None, batch_sum=None, *, <its options>) -> (advantages [N, T], returns [N, T]) and is one
line in ADVANTAGE_ESTIMATORS (`rl_config.adv_estimator`): an AdvantageEstimator that declares the options the
function takes (`rl_config.adv_estimator_options`) and refuses any other by name, so none is silently dropped.
With r_i the response's score (its token-level rewards summed over the mask) and a group g = the n responses
to one prompt:

    grpo / group_norm             A_i = (r_i - mean_g r) / (std_g r + eps)     DeepSeekMath, arXiv:2402.03300
    dr_grpo                       A_i =  r_i - mean_g r                         Dr.GRPO, arXiv:2503.20783
    rloo                          A_i =  r_i - mean_{j in g, j != i} r_j        Ahmadian et al., arXiv:2402.14740
    reinforce_plus_plus           A_it = whiten_batch(sum_{t' >= t} gamma^(t'-t) r_it')   REINFORCE++, arXiv:2501.03262
    reinforce_plus_plus_baseline  A_it = whiten_batch(r_i - mean_g r)          REINFORCE++-baseline, same paper
    grpo_passk                    A_i = (r_max - r_2nd) / (std_g r + eps) for the group's best response, else 0
                                                                                Pass@k PO, arXiv:2503.19595

The group estimators give A = 0 to the whole group when it has one sample or all its rewards are equal.
whiten_batch is (x - mean) / sqrt(var + 1e-8) over every unmasked token of the batch, var unbiased (verl's
`masked_whiten`). The batch is the whole training batch, over every data-parallel rank: every estimator takes
`batch_sum`, a function that sums a tensor over the ranks' batches (the trainer passes an all-reduce; None:
this process holds the whole batch). Only the whitened estimators call it; the group estimators never need
it, because a prompt's group lives on one rank. The REINFORCE++ return of token t is the sum
of the rewards at t and after it (gamma = 1, the default), so with an outcome reward on the last token it is r_i
at every token, minus the KL penalty still to come when `use_kl_in_reward` put one in the token-level rewards.

GRPO conventions (verl `compute_grpo_outcome_advantage`): eps = 1e-6; std is the unbiased sample std
(`torch.std`, divide by n-1) by default, `std_unbiased=False` gives the biased/population std (divide by n),
as TRL and some GRPO write-ups use. One deliberate difference from verl: a group with n=1, or whose rewards
are all equal, gets A = 0 exactly (verl gives a singleton its raw reward, mean 0 / std 1). With one sample
there is no baseline, so its "advantage" is noise; and exact equality is checked with max == min, so
[0.9, 0.9, 0.9] in fp32 gives 0 rather than the ~1e-2 residue that fp rounding of the mean leaves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import torch

from .aggregation import lookup

GroupIndex = torch.Tensor | Sequence[Hashable]
# Sums a tensor over every data-parallel rank's batch and returns the total (same shape); collectives stay out
# of this package, so the trainer supplies it.
BatchSum = Callable[[torch.Tensor], torch.Tensor]


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
                                   epsilon: float = 1e-6, batch_sum: BatchSum | None = None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO outcome advantages broadcast per token; returns (advantages [N, T], returns [N, T]).
    `batch_sum` is unused: group statistics never need another rank's samples.

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
                                     batch_sum: BatchSum | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dr.GRPO (arXiv:2503.20783): A = r - mean_g(r), no std division (pair with seq-mean-token-sum-norm).
    No options: without the std there is no epsilon or std convention to choose."""
    return compute_grpo_outcome_advantage(token_level_rewards, response_mask, group_index, n_samples_per_prompt,
                                          norm_adv_by_std_in_grpo=False)


def _group_stats(r: torch.Tensor, group_index: GroupIndex | None, n_samples_per_prompt: int | None
                 ) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(group id per sample, G, count per group, sum per group, constant-group flag per group)."""
    gid, num_groups = group_ids(r.numel(), group_index, n_samples_per_prompt, device=r.device)
    zeros = torch.zeros(num_groups, dtype=r.dtype, device=r.device)
    counts = zeros.index_add(0, gid, torch.ones_like(r))
    sums = zeros.index_add(0, gid, r)
    gmax = torch.full_like(zeros, -torch.inf).scatter_reduce(0, gid, r, reduce="amax")
    gmin = torch.full_like(zeros, torch.inf).scatter_reduce(0, gid, r, reduce="amin")
    return gid, num_groups, counts, sums, gmax == gmin


def _scores(token_level_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    s = sequence_scores(token_level_rewards, response_mask).detach()
    return s.to(torch.float64 if s.dtype == torch.float64 else torch.float32)


def compute_rloo_outcome_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                                   group_index: GroupIndex | None = None, n_samples_per_prompt: int | None = None,
                                   batch_sum: BatchSum | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO (Kool et al. 2019; Ahmadian et al., arXiv:2402.14740): the baseline of sample i is the mean of
    the *other* samples of its group, A_i = r_i - (sum_g r - r_i) / (n_g - 1) = n_g / (n_g - 1) (r_i - mean_g r).
    Singletons and constant groups get 0."""
    with torch.no_grad():
        r = _scores(token_level_rewards, response_mask)
        gid, _, counts, sums, constant = _group_stats(r, group_index, n_samples_per_prompt)
        others = (sums[gid] - r) / (counts[gid] - 1.0).clamp(min=1.0)
        adv = torch.where(constant[gid], torch.zeros_like(r), r - others)
        adv = broadcast_to_tokens(adv, response_mask)
    return adv, adv


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, epsilon: float = 1e-8,
                  batch_sum: BatchSum | None = None) -> torch.Tensor:
    """(values - mean) / sqrt(var + eps) over the unmasked entries (unbiased var, as verl's `masked_whiten`);
    masked entries come back 0. With `batch_sum` the mean and variance are those of every rank's entries
    together (two sums: the entries and their count, then the squared deviations), so a batch split over
    data-parallel ranks is whitened exactly as the whole batch in one process."""
    total = batch_sum if batch_sum is not None else (lambda t: t)
    m = mask.bool()
    stats = total(torch.stack([torch.where(m, values, torch.zeros_like(values)).sum(), m.sum().to(values.dtype)]))
    mean = stats[0] / stats[1].clamp(min=1.0)
    centred = torch.where(m, values - mean, torch.zeros_like(values))
    sq_dev = total((centred * centred).sum().reshape(1))[0]
    var = sq_dev / (stats[1] - 1.0).clamp(min=1.0)
    return centred * torch.rsqrt(var + epsilon)


def scores_on_last_token(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[N] outcome scores -> [N, T] token-level rewards: each score on its row's last response token, 0
    elsewhere (rows with no response token get nothing). fp32 (fp64 stays fp64)."""
    m = response_mask.bool()
    r = scores.detach().to(torch.float64 if scores.dtype == torch.float64 else torch.float32)
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m, positions, torch.full_like(positions, -1)).max(dim=1).values
    out = torch.zeros(m.shape, dtype=r.dtype, device=r.device)
    rows = torch.nonzero(last >= 0).flatten()
    out[rows, last[rows]] = r[rows]
    return out


def _token_rewards(token_level_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[N, T] rewards (fp32/fp64) with 0 off the mask; an [N] score goes on each row's last response token."""
    if token_level_rewards.dim() == 1:
        return scores_on_last_token(token_level_rewards, response_mask)
    r = token_level_rewards.detach()
    r = r.to(torch.float64 if r.dtype == torch.float64 else torch.float32)
    return torch.where(response_mask.bool(), r, torch.zeros_like(r))


def compute_reinforce_plus_plus_outcome_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                                                  group_index: GroupIndex | None = None,
                                                  n_samples_per_prompt: int | None = None,
                                                  batch_sum: BatchSum | None = None, *, gamma: float = 1.0
                                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu, arXiv:2501.03262): returns G_t = sum_{t' >= t} gamma^(t' - t) r_t', then whitened over
    every token of the batch (every rank's, through `batch_sum`). No groups: the baseline is the batch mean.
    `gamma` in (0, 1] (verl `algorithm.gamma`; its loop, which restarts the return after each masked position,
    is the one used for gamma < 1). Returns (advantages, returns)."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"reinforce_plus_plus option gamma={gamma} must be in (0, 1]")
    with torch.no_grad():
        r = _token_rewards(token_level_rewards, response_mask)
        m = response_mask.bool()
        if gamma == 1.0:
            returns = r.flip(-1).cumsum(-1).flip(-1)
        else:
            returns = torch.zeros_like(r)
            running = torch.zeros_like(r[:, 0])
            for t in reversed(range(r.shape[1])):
                running = r[:, t] + gamma * running
                returns[:, t] = running
                running = running * m[:, t]
        returns = torch.where(m, returns, torch.zeros_like(returns))
        return masked_whiten(returns, m, batch_sum=batch_sum), returns


def compute_reinforce_plus_plus_baseline_outcome_advantage(token_level_rewards: torch.Tensor,
                                                           response_mask: torch.Tensor,
                                                           group_index: GroupIndex | None = None,
                                                           n_samples_per_prompt: int | None = None,
                                                           batch_sum: BatchSum | None = None
                                                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++-baseline (arXiv:2501.03262): subtract the group mean (no std), broadcast to tokens, then
    whiten over every token of the batch (every rank's, through `batch_sum`). Constant groups and singletons
    are 0 before whitening."""
    with torch.no_grad():
        centred = group_norm_advantages(_scores(token_level_rewards, response_mask), group_index,
                                        n_samples_per_prompt, norm_adv_by_std_in_grpo=False)
        m = response_mask.bool()
        tokens = broadcast_to_tokens(centred, response_mask)
        adv = masked_whiten(tokens, m, batch_sum=batch_sum)
    return adv, adv


def compute_grpo_passk_outcome_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                                         group_index: GroupIndex | None = None,
                                         n_samples_per_prompt: int | None = None, batch_sum: BatchSum | None = None,
                                         *, std_unbiased: bool = True, epsilon: float = 1e-6
                                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass@k policy optimisation (Walder & Karkhanis, arXiv:2503.19595; verl `grpo_passk`): only the best
    response of each group learns, with A = (r_max - r_second_max) / (std_g r + eps); every other response
    gets 0. Ties for the best go to the first sample (then r_max == r_2nd and A = 0 anyway). Always divided by
    the std: verl's norm_adv_by_std_in_grpo=false is not an option here (it is refused, not ignored)."""
    with torch.no_grad():
        r = _scores(token_level_rewards, response_mask)
        gid, num_groups = group_ids(r.numel(), group_index, n_samples_per_prompt, device=r.device)
        adv = torch.zeros_like(r)
        for g in range(num_groups):
            rows = torch.nonzero(gid == g).flatten()
            if rows.numel() < 2:
                continue
            values = r[rows]
            best = int(torch.argmax(values))  # first maximal value
            second = torch.cat([values[:best], values[best + 1:]]).max()
            adv[rows[best]] = (values[best] - second) / (values.std(unbiased=std_unbiased) + epsilon)
        adv = broadcast_to_tokens(adv, response_mask)
    return adv, adv


AdvantageFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
OptionCheck = Callable[[Any], "str | None"]  # a value -> what is wrong with it, or None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _flag(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def _positive(v: Any) -> str | None:
    return None if _is_number(v) and v > 0 else "must be a number > 0"


def _discount(v: Any) -> str | None:
    return None if _is_number(v) and 0 < v <= 1 else "must be a number in (0, 1]"


@dataclass(frozen=True, eq=False)
class AdvantageEstimator:
    """One ADVANTAGE_ESTIMATORS entry: the function, and the options it accepts (keyword arguments beyond
    token_level_rewards, response_mask, group_index, n_samples_per_prompt and batch_sum), each with a check of
    its value. Calling the entry checks the options first, so an option the estimator does not use is a
    ValueError naming it, never silently dropped; `rl_config.adv_estimator_options` is checked the same way by
    validate() before a run starts."""

    name: str
    fn: AdvantageFn
    options: dict[str, OptionCheck] = field(default_factory=dict)

    def option_errors(self, options: dict[str, Any], prefix: str = "") -> list[str]:
        """One line per unknown option or bad value (empty when all are good)."""
        errors = []
        for key, value in options.items():
            if key not in self.options:
                takes = ", ".join(sorted(self.options)) or "none"
                errors.append(f"{prefix}{key}: adv_estimator={self.name} does not accept option '{key}' "
                              f"(its options: {takes})")
            elif (problem := self.options[key](value)) is not None:
                errors.append(f"{prefix}{key}={value!r} {problem}")
        return errors

    def __call__(self, token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                 group_index: GroupIndex | None = None, n_samples_per_prompt: int | None = None,
                 batch_sum: BatchSum | None = None, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        errors = self.option_errors(options)
        if errors:
            raise ValueError("; ".join(errors))
        return self.fn(token_level_rewards, response_mask, group_index, n_samples_per_prompt, batch_sum=batch_sum,
                       **options)


# No norm_adv_by_std_in_grpo: the one way to drop the std is adv_estimator=dr_grpo (docs/algorithms.md).
_GRPO_OPTIONS: dict[str, OptionCheck] = {"std_unbiased": _flag, "epsilon": _positive}
_GRPO = AdvantageEstimator("grpo", compute_grpo_outcome_advantage, _GRPO_OPTIONS)

# adv_estimator -> AdvantageEstimator: called as fn(token_level_rewards, response_mask, group_index=None,
# n_samples_per_prompt=None, batch_sum=None, **options), returning (advantages [N, T], returns [N, T]).
# Add one line to add an estimator, with the options its function takes.
ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "group_norm": _GRPO,  # MindSpeed-RL name
    "grpo": _GRPO,  # verl name
    "dr_grpo": AdvantageEstimator("dr_grpo", compute_drgrpo_outcome_advantage),
    "rloo": AdvantageEstimator("rloo", compute_rloo_outcome_advantage),
    "reinforce_plus_plus": AdvantageEstimator("reinforce_plus_plus", compute_reinforce_plus_plus_outcome_advantage,
                                              {"gamma": _discount}),
    "reinforce_plus_plus_baseline": AdvantageEstimator("reinforce_plus_plus_baseline",
                                                       compute_reinforce_plus_plus_baseline_outcome_advantage),
    "grpo_passk": AdvantageEstimator("grpo_passk", compute_grpo_passk_outcome_advantage, _GRPO_OPTIONS),
}


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """ADVANTAGE_ESTIMATORS[name], or a ValueError listing the valid names."""
    return lookup(ADVANTAGE_ESTIMATORS, name, "adv_estimator")
