"""Shaping penalties (values <= 0): n-gram repetition (open-r1 / Demystifying Long CoT) and DAPO's soft
overlong penalty."""
from __future__ import annotations

import re
from typing import Any, Mapping

# CJK has no spaces between words, so each ideograph/kana/hangul character is one token; everything
# else splits on whitespace like open-r1. (No jieba: character n-grams catch the same loops.)
_CJK = (r"\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
        r"\uf900-\ufaff\uff00-\uffef")
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")


def tokens(text: str) -> list[str]:
    """Lower-cased whitespace tokens, with every CJK character its own token."""
    return _TOKEN.findall(text.lower())


def repetition_penalty_reward(completion: str, labels: Mapping[str, Any], *, ngram_size: int = 3,
                              max_penalty: float = -1.0) -> float:
    """``max_penalty * (1 - distinct n-grams / total n-grams)``; 0 for text shorter than one n-gram."""
    if max_penalty > 0:
        raise ValueError(f"max_penalty must be <= 0, got {max_penalty}")
    toks = tokens(completion)
    total = len(toks) - ngram_size + 1
    if total <= 0:
        return 0.0
    distinct = len(set(zip(*(toks[i:] for i in range(ngram_size)))))
    return (1.0 - distinct / total) * max_penalty


def overlong_reward(completion: str, labels: Mapping[str, Any], *, max_length: int, buffer: int,
                    penalty_factor: float = 1.0, response_length: int | None = None) -> float:
    """DAPO soft overlong punishment on the response length in *tokens*.

    0 up to ``max_length - buffer`` tokens, then linear down to ``-penalty_factor`` at ``max_length``,
    and ``-penalty_factor`` beyond. The length comes from ``response_length`` (option) or the row's
    ``response_length`` label (``RewardFunction`` fills it from the rollout's token counts).
    """
    length = response_length if response_length is not None else labels.get("response_length")
    if length is None:
        raise ValueError("overlong needs the response length in tokens: pass response_lengths to the "
                         "reward function or a 'response_length' label")
    if not 0 < buffer <= max_length:
        raise ValueError(f"need 0 < buffer <= max_length, got buffer={buffer}, max_length={max_length}")
    expected = max_length - buffer
    if length <= expected:
        return 0.0
    if length >= max_length:
        return -penalty_factor
    return -(length - expected) / buffer * penalty_factor
