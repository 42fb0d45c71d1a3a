"""GSM8K: the gold is the number after ``####``; the prediction is compared as an exact number.

Prediction: the last ``\\boxed{}``, else the last ``<answer>`` block, else the text after the last
``####``, else (flexible, as lm-eval's "flexible-extract") the last number in the completion. Inside
the chosen span the last number counts, so ``\\boxed{\\$1,000}`` and ``<answer>18 dollars</answer>``
both work. Numbers compare exactly (``18 == 18.00``, ``1,000 == 1000``, ``+12 == 12``); a U+2212 minus
counts as a minus.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Mapping

from mindrl.rewards.extract import gold_answer, last_boxed, last_number, last_tag_content


def gsm8k_gold(gold: Any) -> Fraction:
    """``'…\\n#### 1,000'`` or ``'72'`` or ``72`` -> Fraction; ValueError if there is no number."""
    text = str(gold)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    value = last_number(text)
    if value is None:
        raise ValueError(f"no number in GSM8K gold {str(gold)[:80]!r}")
    return value


def gsm8k_prediction(completion: str) -> Fraction | None:
    completion = completion.replace("\u2212", "-")  # U+2212 minus: "−3" is -3, not 3
    for span in (last_boxed(completion), last_tag_content(completion, "answer")):
        if span is not None:
            return last_number(span)
    if "####" in completion:
        return last_number(completion.rsplit("####", 1)[1])
    return last_number(completion)


def gsm8k_reward(completion: str, labels: Mapping[str, Any]) -> float:
    """1.0 iff the predicted number equals the GSM8K gold number."""
    gold = gsm8k_gold(gold_answer(labels))
    pred = gsm8k_prediction(completion)
    return 1.0 if pred is not None and pred == gold else 0.0
