"""Overlong responses (DAPO, arXiv:2503.14476, section 3.4).

A response cut off at max_response_length (finish reason "length") has no final answer, so its reward says
nothing about its reasoning; punishing it as "wrong" teaches the model that long reasoning is bad. Two fixes:

* Overlong filtering: mask the loss of truncated responses out entirely (`overlong_filter_mask`). The rows
  become fully masked; the seq-* aggregations then leave them out of the sequence count, token-mean of the
  token count. Their rewards still enter the group statistics of the advantage unless the caller drops them.

* Soft overlong punishment (DAPO's overlong buffer) is a reward, so it lives with the scorers: the
  `overlong` scorer in mindrl/rewards/penalties.py (verifier_function: [..., overlong], verifier_options:
  {overlong: {max_length, buffer, penalty_factor}}) is the one implementation. It is not repeated here.

The trainer applies the filter when `rl_config.overlong_filter` is true.
"""
from __future__ import annotations

from typing import Sequence

import torch

TRUNCATED_FINISH_REASONS = frozenset({"length"})


def truncated_from_finish_reasons(finish_reasons: Sequence[str | None],
                                  device: torch.device | str | None = None) -> torch.Tensor:
    """bool [N]: True where the engine stopped on the length limit (vLLM / SGLang finish_reason "length")."""
    return torch.tensor([r in TRUNCATED_FINISH_REASONS for r in finish_reasons], dtype=torch.bool, device=device)


def overlong_filter_mask(response_mask: torch.Tensor,
                         truncated: torch.Tensor | Sequence[bool] | Sequence[str | None]) -> torch.Tensor:
    """response_mask [N, T] with the rows of truncated responses zeroed; same dtype as response_mask.

    truncated: bool [N], or the finish reasons themselves (strings; "length" means truncated).
    """
    if not isinstance(truncated, torch.Tensor):
        items = list(truncated)
        if any(isinstance(x, str) or x is None for x in items):
            truncated = truncated_from_finish_reasons(items, device=response_mask.device)
        else:
            truncated = torch.tensor([bool(x) for x in items], dtype=torch.bool, device=response_mask.device)
    truncated = truncated.to(device=response_mask.device, dtype=torch.bool).reshape(-1)
    if truncated.numel() != response_mask.shape[0]:
        raise ValueError(f"{truncated.numel()} truncation flags for {response_mask.shape[0]} responses")
    keep = (~truncated).unsqueeze(-1)
    return torch.where(keep, response_mask, torch.zeros_like(response_mask))
