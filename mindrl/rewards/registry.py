"""The scorer registry: a plain dict, name -> scorer.

A scorer is ``fn(completion: str, labels: Mapping[str, Any], **options) -> float``: ``completion`` is
the generated text after the prompt, ``labels`` the row's other fields (``label``, ``nums``,
``target``, ``response_length``...), options come from config (keyword-only parameters).

Adding a scorer: write it in a new file of this package, then add one line to ``SCORERS``. It must be
a module-level function (workers receive it by reference, pickled by name).
"""
from __future__ import annotations

import difflib
from typing import Callable

from mindrl.rewards.countdown import countdown_reward
from mindrl.rewards.format_rewards import (format_reward, reasoning_steps_reward, strict_format_reward,
                                           tag_count_reward, think_len_reward)
from mindrl.rewards.gsm8k import gsm8k_reward
from mindrl.rewards.math23k import math23k_reward
from mindrl.rewards.math_acc import acc_reward, base_acc_reward
from mindrl.rewards.penalties import overlong_reward, repetition_penalty_reward

Scorer = Callable[..., float]

SCORERS: dict[str, Scorer] = {
    "format": format_reward,
    "acc": acc_reward,
    "base_acc": base_acc_reward,
    "gsm8k": gsm8k_reward,
    "math23k": math23k_reward,
    "countdown": countdown_reward,
    "think_len": think_len_reward,
    "strict_format": strict_format_reward,
    "tag_count": tag_count_reward,
    "reasoning_steps": reasoning_steps_reward,
    "repetition_penalty": repetition_penalty_reward,
    "overlong": overlong_reward,
}

# Other frameworks' names for the same scorers (MindSpeed-RL calls reasoning_steps "step").
ALIASES: dict[str, str] = {"step": "reasoning_steps"}


def get_scorer(name: str) -> Scorer:
    """The scorer registered as ``name`` (or an alias); ValueError with a "did you mean" otherwise."""
    key = ALIASES.get(name, name)
    if key in SCORERS:
        return SCORERS[key]
    valid = sorted(SCORERS) + sorted(ALIASES)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown reward scorer {name!r}.{hint} Valid names: {', '.join(valid)}")


def describe() -> str:
    """One line per scorer (name: first docstring line), for --help."""
    lines = []
    for name, fn in SCORERS.items():
        doc = (fn.__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<19} {doc[0] if doc else ''}")
    return "\n".join(lines)
