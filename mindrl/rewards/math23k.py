"""Math23K (Chinese primary-school word problems): numeric answers in the dataset's own notations.

Gold ``ans`` strings (MWPToolkit splits) are integers, decimals, fractions ``((7)/(15))``, mixed
numbers ``19((3)/(4))`` (= 19¾, not 19·¾) and percentages ``25%``. Predictions may use those or
``\\frac{7}{15}``, ``19\\frac{3}{4}``, ``19又3/4``, ``15分之7``, ``百分之25``, ``25\\%``, ``0.25``.

The answer span is the last ``\\boxed{}``, else the last ``<answer>`` block, else the whole completion;
its *last* number-like expression is the prediction. Values compare exactly as fractions, except
that a prediction written with a decimal point may be off by 1e-4 (MWPToolkit's tolerance: 0.4667
matches 7/15, 0.47 does not; 12001.0 never matches 12000). A percentage gold also accepts the bare
number (``25`` for ``25%``), as the question usually asks "百分之几".
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Mapping, NamedTuple

from mindrl.rewards.extract import gold_answer, last_boxed, last_tag_content

_NUM = r"\d+(?:\.\d+)?"
# A minus sign only where it cannot be subtraction: not right after a digit or ")" ("20-5" is 20 and 5).
_NEG = r"(?:(?<![\d)])-)"


def _tex_frac(a: str, b: str) -> str:
    """``\\frac{a}{b}`` (also ``\\dfrac``/``\\tfrac``) with named groups a and b."""
    return r"\\[dt]?frac\s*\{\s*(?P<%s>%s)\s*\}\s*\{\s*(?P<%s>%s)\s*\}" % (a, _NUM, b, _NUM)


# Alternatives in priority order: at one position the first that matches wins, so a mixed number is
# taken whole before its integer part could match on its own. Named groups say which form matched.
_VALUE = re.compile("|".join([
    r"(?P<mixp>\d+)\s*又?\s*\(\(\s*(?P<mixp_a>\d+)\s*\)\s*/\s*\(\s*(?P<mixp_b>\d+)\s*\)\)",  # 19((3)/(4))
    r"(?P<mixt>\d+)\s*又?\s*" + _tex_frac("mixt_a", "mixt_b"),  # 19\frac{3}{4}, 19又\frac{3}{4}
    r"(?P<mixc>\d+)\s*又\s*(?P<mixc_a>\d+)\s*/\s*(?P<mixc_b>\d+)",  # 19又3/4
    r"(?P<mixz>\d+)\s*又\s*(?P<mixz_b>\d+)\s*分之\s*(?P<mixz_a>\d+)",  # 19又4分之3
    r"(?P<neg>" + _NEG + r")?\(\(\s*(?P<pf_a>%s)\s*\)\s*/\s*\(\s*(?P<pf_b>%s)\s*\)\)" % (_NUM, _NUM),  # ((7)/(15))
    r"(?P<tneg>" + _NEG + r")?" + _tex_frac("tf_a", "tf_b"),  # \frac{7}{15}
    r"(?P<zf_b>%s)\s*分之\s*(?P<zf_a>%s)" % (_NUM, _NUM),  # 15分之7 = 7/15
    r"百分之\s*(?P<zpct>%s)" % _NUM,  # 百分之25 = 25%
    r"(?P<sneg>" + _NEG + r")?\(?\s*(?P<sf_a>%s)\s*/\s*(?P<sf_b>%s)\s*\)?" % (_NUM, _NUM),  # 7/15, (7/15)
    r"(?P<pct>" + _NEG + r"?%s)\s*(?:\\?%%|％)" % _NUM,  # 25%, 25\%, 25％
    r"(?P<num>" + _NEG + r"?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)",
]))


class Value(NamedTuple):
    value: Fraction
    percent: bool = False  # written as a percentage (value already divided by 100)
    decimal: bool = False  # written with a decimal point: may be a rounded value


def _div(a: str, b: str) -> Fraction | None:
    den = Fraction(b)
    return None if den == 0 else Fraction(a) / den


def _value(m: re.Match) -> Value | None:
    g = m.groupdict()
    if g["mixp"] is not None:
        return _mixed(g["mixp"], g["mixp_a"], g["mixp_b"])
    if g["mixt"] is not None:
        return _mixed(g["mixt"], g["mixt_a"], g["mixt_b"])
    if g["mixc"] is not None:
        return _mixed(g["mixc"], g["mixc_a"], g["mixc_b"])
    if g["mixz"] is not None:
        return _mixed(g["mixz"], g["mixz_a"], g["mixz_b"])
    for a, b, neg in (("pf_a", "pf_b", "neg"), ("tf_a", "tf_b", "tneg"), ("zf_a", "zf_b", None),
                      ("sf_a", "sf_b", "sneg")):
        if g[a] is not None:
            v = _div(g[a], g[b])
            if v is None:
                return None
            return Value(-v if neg and g[neg] else v, False, "." in g[a] + g[b])
    pct = g["zpct"] if g["zpct"] is not None else g["pct"]
    if pct is not None:
        return Value(Fraction(pct) / 100, True, "." in pct)
    return Value(Fraction(g["num"].replace(",", "")), False, "." in g["num"])


def _mixed(whole: str, a: str, b: str) -> Value | None:
    frac = _div(a, b)
    return None if frac is None else Value(int(whole) + frac)


def last_value(text: str) -> Value | None:
    """The last number-like expression in ``text`` in any supported notation."""
    last = None
    for last in _VALUE.finditer(text):
        pass
    return None if last is None else _value(last)


def _close(pred: Fraction, gold: Fraction, decimal: bool) -> bool:
    return pred == gold or (decimal and abs(pred - gold) <= Fraction(1, 10_000))


def math23k_equal(pred: Value, gold: Value) -> bool:
    if _close(pred.value, gold.value, pred.decimal):
        return True
    # "25" for a "25%" gold: the question asked for the percentage number.
    return gold.percent and not pred.percent and _close(pred.value / 100, gold.value, pred.decimal)


def math23k_reward(completion: str, labels: Mapping[str, Any]) -> float:
    """1.0 iff the predicted value equals the Math23K gold ``ans``/``label`` in value."""
    raw = str(gold_answer(labels))
    gold = last_value(raw)
    if gold is None:
        raise ValueError(f"cannot read Math23K gold answer {raw[:80]!r}")
    span = last_boxed(completion)
    if span is None:
        span = last_tag_content(completion, "answer")
    pred = last_value(completion if span is None else span)
    return 1.0 if pred is not None and math23k_equal(pred, gold) else 0.0
