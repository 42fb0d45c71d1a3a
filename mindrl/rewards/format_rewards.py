"""Format scorers: R1-Zero ``<think>``/``<answer>`` structure, open-r1's strict/tag-count variants,
thinking length (Datawhale-R1) and reasoning steps (open-r1).

``prefix``: with an R1-Zero prompt that ends in ``<think>``, the completion starts *inside* the
thought, so the tag checks run on ``prefix + completion``; set ``prefix: "<think>"`` for such prompts.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")

# Whitespace around and between the two blocks is fine; anything else outside them is not.
_FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
# open-r1's format_reward layout (newline after/before every tag). open-r1 compiles it with
# re.MULTILINE, which lets "$" match before *any* newline and so accepts trailing junk after
# "</answer>\n"; we anchor at the true end (one optional final newline) to make "strict" mean it.
_STRICT = re.compile(r"<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>\n?", re.DOTALL)
# open-r1 reasoning_steps_reward; re.MULTILINE so "1." counts at the start of every line, which is
# what its docstring describes (its code only matched a list item at the very start of the text).
_STEPS = re.compile(r"(Step \d+:|^\d+\.|\n-|\n\*|First,|Second,|Next,|Finally,)", re.MULTILINE)


def _one_of_each_tag(text: str) -> bool:
    # Without this, ".*?" would happily swallow a second "<answer>...</answer>" block.
    return all(text.count(tag) == 1 for tag in _TAGS)


def format_reward(completion: str, labels: Mapping[str, Any], *, prefix: str = "") -> float:
    """1.0 iff ``prefix + completion`` is exactly ``<think>…</think> <answer>…</answer>`` (whitespace between)."""
    text = prefix + completion
    return 1.0 if _one_of_each_tag(text) and _FORMAT.fullmatch(text) else 0.0


def strict_format_reward(completion: str, labels: Mapping[str, Any], *, prefix: str = "") -> float:
    """open-r1's layout: ``<think>\\n…\\n</think>\\n<answer>\\n…\\n</answer>``, one of each tag, nothing after."""
    text = prefix + completion
    return 1.0 if _one_of_each_tag(text) and _STRICT.fullmatch(text) else 0.0


def tag_count_reward(completion: str, labels: Mapping[str, Any], *, prefix: str = "") -> float:
    """open-r1's partial credit: 0.25 for each of the four newline-delimited tags present exactly once."""
    text = prefix + completion
    parts = ("<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>")
    return 0.25 * sum(text.count(p) == 1 for p in parts)


def think_len_reward(completion: str, labels: Mapping[str, Any], *, prefix: str = "",
                     min_chars: int = 1000) -> float:
    """Datawhale-R1's thinking-length reward: 1.0 iff the stripped first ``<think>`` block is longer than ``min_chars``.

    Datawhale later withdrew it (it encourages padding and repetition); kept for reproducing their runs.
    """
    text = prefix + completion
    start = text.find("<think>")
    if start < 0:
        return 0.0
    end = text.find("</think>", start)
    if end < 0:
        return 0.0
    return 1.0 if len(text[start + len("<think>"):end].strip()) > min_chars else 0.0


def reasoning_steps_reward(completion: str, labels: Mapping[str, Any], *, target_steps: int = 3) -> float:
    """open-r1's step reward: min(1, markers / target_steps), markers such as "Step 2:", "1.", "First,"."""
    return min(1.0, len(_STEPS.findall(completion)) / target_steps)
