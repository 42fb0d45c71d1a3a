"""Math answer accuracy with math-verify: ``acc`` (answer only) and ``base_acc`` (R1-Zero: format and answer).

Which text is the answer: the last ``\\boxed{…}`` in the completion, else the content of the last
``<answer>…</answer>``, else whatever math-verify extracts from the whole text (its "final answer is"
anchors, then the last LaTeX expression or number). Equivalence is math-verify's ``verify``.

Timeouts: math-verify's own timeouts use ``signal.alarm`` (integer seconds, main thread only, and
they would cancel the sandbox's per-item timer), so we always call it with them disabled; the
sandbox (``sandbox.py``) bounds every item instead.
"""
from __future__ import annotations

import functools
import math
import re
from fractions import Fraction
from typing import Any, Mapping

from mindrl.rewards.extract import (gold_answer, last_boxed, last_tag_content, normalize_free_text,
                                    strip_math_delimiters)
from mindrl.rewards.format_rewards import format_reward

_PLAIN = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")  # 72, -3.5, 1,000
_ARITHMETIC = re.compile(r"[-+*/(). 0-9]*[0-9][-+*/(). 0-9]*")  # 7/2, (1+2)*3: no LaTeX parser needed
_CACHE_MAX_CHARS = 512  # only short strings are memoised: whole completions would bloat the caches
# Prose detection for <answer> blocks: words left after removing \commands, \text{...} and
# environment names (\begin{bmatrix}, \begin{array}{ccc}: a matrix is an expression, not prose).
_TEX_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{[^{}]*\}"
                       r"|\\(?:begin|end)\s*\{[A-Za-z*]*\}(?:\s*\{[lcr|\s]*\})?")
_TEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{3,}|[\u4e00-\u9fff]")


def _mv():
    """Import math-verify lazily (it pulls in sympy: ~0.6 s) and silence its 'timeout disabled' warning."""
    import math_verify
    import math_verify.grader
    import math_verify.parser

    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    return math_verify


@functools.lru_cache(maxsize=1)
def _expr_config():
    return _mv().ExprExtractionConfig()


def _parse(text: str) -> list:
    return _mv().parse(text, parsing_timeout=None)


def _parse_expression(expr: str) -> list:
    """Parse one answer expression (a boxed content, a gold label).

    Plain arithmetic (``7/2``, ``-0.25``, ``(1+2)*3``) goes to math-verify's expression extractor
    (sympy, ~0.05 ms) instead of its LaTeX parser (ANTLR, 5-50 ms). LaTeX goes in as ``$…$``:
    math-verify's boxed extraction fails on e.g. ``10\\%``, while the inline-math path handles it.
    """
    if _ARITHMETIC.fullmatch(expr):
        parsed = _mv().parse(expr, extraction_config=[_expr_config()], parsing_timeout=None)
        if parsed:
            return parsed
    parsed = _parse(f"${expr}$")
    if not any(not isinstance(p, str) for p in parsed):
        parsed = _parse(f"\\boxed{{{expr}}}") or parsed
    return parsed


@functools.lru_cache(maxsize=4096)
def _parse_expression_cached(expr: str) -> list:
    return _parse_expression(expr)


def normalize_gold(gold: Any) -> str:
    """The answer expression in a gold label: ``'$\\frac{7}{2}$'``, ``'\\boxed{3}'``, ``'…#### 72'``, ``72``."""
    text = str(gold).strip()
    if "####" in text:  # GSM8K-style solution text
        text = text.rsplit("####", 1)[1]
    boxed = last_boxed(text)
    if boxed is not None:  # a full solution, or a boxed label
        text = boxed
    return strip_math_delimiters(text)


def parse_gold(gold: Any) -> list:
    text = normalize_gold(gold)
    return _parse_expression_cached(text) if len(text) <= _CACHE_MAX_CHARS else _parse_expression(text)


def extract_prediction(completion: str) -> tuple[str, str]:
    """(answer text, where it came from: 'boxed' | 'answer' | 'text')."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed, "boxed"
    tagged = last_tag_content(completion, "answer")
    if tagged is not None:
        return tagged, "answer"
    return completion, "text"


@functools.lru_cache(maxsize=4096)
def _parse_text_cached(text: str) -> list:
    return _parse(text)


def _is_prose(text: str) -> bool:
    """Words outside LaTeX commands and \\text{}: "The answer is 12", "答案是 12", "12 apples"."""
    bare = _TEX_COMMAND.sub(" ", _TEX_TEXT.sub(" ", text))
    return bool(_WORD.search(bare))


_TAIL_CHARS = 600
_ANCHOR_CHARS = 3000  # how far back the tail reaches for an "answer" anchor
_ANSWER_WORD = re.compile("answer", re.IGNORECASE)
_EXPRESSION_MAX_CHARS = 1000  # a longer boxed/<answer> content is read as text, not parsed as one formula


def text_tail(text: str, keep: int = _TAIL_CHARS, anchor_window: int = _ANCHOR_CHARS) -> str:
    """The last ~`keep` characters, cut at a line, else sentence, else word boundary.

    The free-text extraction wants the *last* expression or number; parsing a long completion whole
    costs math-verify's pure-Python LaTeX parser tens of milliseconds, mostly on text before it.
    But math-verify prefers an answer after the word "answer" ("The answer is 42.") to any later
    number, so when the tail has no "answer" and the last one lies within `anchor_window`
    characters of the end, the tail starts at that line (or sentence) instead: "The answer is 42."
    followed by a long check of the arithmetic is still read as 42. Never more than about
    `anchor_window` characters, however long the text and its lines."""
    if len(text) <= keep:
        return text
    start = len(text) - keep
    if _ANSWER_WORD.search(text, start) is None:
        anchor = None
        for anchor in _ANSWER_WORD.finditer(text, max(0, len(text) - anchor_window), start + 5):
            pass
        if anchor is not None:
            a, near = anchor.start(), max(0, anchor.start() - 200)
            line = text.rfind("\n", near, a)
            begin = line if line != -1 else text.rfind(". ", near, a)
            return text[begin + 1:] if begin != -1 else text[a:]
    for sep in ("\n", ". ", " "):
        cut = text.find(sep, start, len(text) - 1)
        if cut != -1:
            return text[cut + 1:]
    return text[start:]


def parse_prediction(answer: str, source: str) -> list:
    """Parse an extracted answer. A boxed answer, or an ``<answer>`` block holding just an expression,
    is parsed as one expression: math-verify's free-text extraction would read ``2 \\sqrt{3}`` as 2
    and ``\\left( 3, \\frac{\\pi}{2} \\right)`` as 3. Prose (and the whole completion) goes to the
    free-text extraction, which finds the answer in it."""
    text = strip_math_delimiters(answer) if source != "text" else answer
    text = text.replace("\u2212", "-")  # U+2212 minus: math-verify reads it as nothing
    short = len(text) <= _CACHE_MAX_CHARS
    expression = len(text) <= _EXPRESSION_MAX_CHARS and (
        source == "boxed" or (source == "answer" and "$" not in text and not _is_prose(text)))
    if expression:
        parsed = _parse_expression_cached(text) if short else _parse_expression(text)
        if source == "boxed" or any(not isinstance(p, str) for p in parsed):
            return parsed
        # an <answer> block that is no expression ("So it is +12."): read it as free text instead
    text = normalize_free_text(text_tail(text))
    short = len(text) <= _CACHE_MAX_CHARS
    return _parse_text_cached(text) if short else _parse(text)


def _plain_numbers_equal(pred: str, gold: str) -> bool | None:
    """Verdict for two plain numbers without sympy, or None if either is anything else.

    Same rule as math-verify's numeric comparison: integers exactly, and when either side has a
    decimal point, both rounded to 6 decimals. It matters for speed: a *wrong* answer costs
    math-verify a sympy ``simplify`` (~5-10 ms), and most rollouts of a hard prompt are wrong.
    """
    p, g = strip_math_delimiters(pred), strip_math_delimiters(gold)
    if not (_PLAIN.fullmatch(p) and _PLAIN.fullmatch(g)):
        return None
    a, b = Fraction(p.replace(",", "")), Fraction(g.replace(",", ""))
    if "." in p or "." in g:
        return round(a, 6) == round(b, 6)
    return a == b


_TEX_NOISE = re.compile(r"\s+|\\left|\\right|\\[!,;: ]|\.$")


def _same_text(pred: str, gold: str) -> bool:
    """Identical up to spacing/sizing commands: equivalent without parsing (~30 ms of ANTLR per side)."""
    p = _TEX_NOISE.sub("", strip_math_delimiters(pred)).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    g = _TEX_NOISE.sub("", strip_math_delimiters(gold)).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return bool(p) and p == g


def _numbers_verdict(gold_parsed: list, pred_parsed: list) -> bool | None:
    """The verdict for two plain numbers without math-verify's sympy simplify (tens of ms).

    Exact for integers and fractions; when either side is a float, both are rounded to 6 decimals
    (the rule of ``_plain_numbers_equal``, and of math-verify's rounding). Computed on exact
    fractions: sympy >= 1.13 says ``Float(5.0) != Integer(5)`` even after ``round(6)``, which made
    "Final answer: 5.0" against gold 5 a 0 here while ``verify`` (through simplify) said 1.
    Anything that is not a finite Integer/Rational/Float returns None (ask verify).
    """
    from sympy import Float, Rational

    g = next((x for x in gold_parsed if not isinstance(x, str)), None)
    p = next((x for x in pred_parsed if not isinstance(x, str)), None)
    if not (isinstance(g, (Rational, Float)) and isinstance(p, (Rational, Float))):
        return None
    if not (g.is_finite and p.is_finite):
        return None
    if isinstance(g, Float) or isinstance(p, Float):
        a, b = Fraction(str(Rational(g))), Fraction(str(Rational(p)))
        return round(a, 6) == round(b, 6)
    return bool(g == p)


def _constants_differ(gold_parsed: list, pred_parsed: list) -> bool:
    """True when both sides are constant expressions whose values clearly differ (verify would say False).

    ``verify`` would compare them numerically (fails) and then run ``simplify(a - b)`` (tens of ms),
    which cannot reach 0 for numbers that differ by far more than its 6-decimal rounding. Symbols,
    relations, sets, tuples and matrices are left to ``verify``.
    """
    from sympy import Expr, Symbol

    g = next((x for x in gold_parsed if not isinstance(x, str)), None)
    p = next((x for x in pred_parsed if not isinstance(x, str)), None)
    for x in (g, p):
        if not isinstance(x, Expr) or isinstance(x, Symbol) or getattr(x, "is_Matrix", False) or x.free_symbols:
            return False
    try:
        a, b = complex(g.evalf(20)), complex(p.evalf(20))
    except (TypeError, ValueError, ArithmeticError):
        return False
    if not all(math.isfinite(v) for v in (a.real, a.imag, b.real, b.imag)):
        return False
    return abs(a - b) > 1e-4 * max(1.0, abs(a))


def is_equivalent(answer: str, source: str, gold: Any) -> bool:
    """Mathematical equivalence of an extracted answer and a gold label (list gold: any of them)."""
    if isinstance(gold, (list, tuple)):
        return any(is_equivalent(answer, source, g) for g in gold)
    if source != "text":
        gold_text = normalize_gold(gold)
        verdict = _plain_numbers_equal(answer, gold_text)
        if verdict is not None:
            return verdict
        if _same_text(answer, gold_text):
            return True
    gold_parsed = parse_gold(gold)
    if not gold_parsed:
        raise ValueError(f"cannot parse gold answer {str(gold)[:80]!r}")
    pred_parsed = parse_prediction(answer, source)
    if not pred_parsed:
        return False
    verdict = _numbers_verdict(gold_parsed, pred_parsed)
    if verdict is not None:
        return verdict
    if _constants_differ(gold_parsed, pred_parsed):
        return False
    return bool(_mv().verify(gold_parsed, pred_parsed, timeout_seconds=None,
                             allow_set_relation_comp=_is_solution_set(gold_parsed)))


def _is_solution_set(gold_parsed: list) -> bool:
    """Whether the gold is plainly a set of values, so that an inequality answer may be read as one.

    ``x \\in [2,5]``, ``[0,\\infty)``, ``(-\\infty,1)\\cup(2,\\infty)``, ``(0,5]``: a grader accepts
    ``2 \\le x \\le 5`` or ``y \\ge 0`` for them, and math-verify does when asked
    (``allow_set_relation_comp``). Not for an open interval with two finite ends: ``(1,2)`` is as
    often a point as an interval, and ``1 < x < 2`` is no answer for the point (1, 2).
    """
    from sympy import Eq, Interval, Set, Symbol, Union

    g = next((x for x in gold_parsed if not isinstance(x, str)), None)
    if isinstance(g, Eq) and isinstance(g.lhs, Symbol) and isinstance(g.rhs, Set):  # "x \\in S"
        return True
    if isinstance(g, Union):
        return True
    if isinstance(g, Interval):
        return not (g.left_open and g.right_open and g.start.is_finite and g.end.is_finite)
    return False


def acc_reward(completion: str, labels: Mapping[str, Any]) -> float:
    """1.0 iff the completion's answer is mathematically equivalent to the gold ``label``."""
    answer, source = extract_prediction(completion)
    return 1.0 if is_equivalent(answer, source, gold_answer(labels)) else 0.0


def base_acc_reward(completion: str, labels: Mapping[str, Any], *, prefix: str = "") -> float:
    """R1-Zero's rule reward: 1.0 iff the ``format`` check passes and ``acc`` is 1."""
    if format_reward(completion, labels, prefix=prefix) != 1.0:
        return 0.0
    return acc_reward(completion, labels)


# One of each common answer shape. ANTLR (the LaTeX parser) builds its prediction cache lazily and
# sympy imports much of itself on first use, so the first fraction/tuple/interval/matrix/wrong-answer
# simplify in a fresh process costs 0.1-1 s. Paying that once, before workers fork, keeps those
# first items far from the per-item timeout.
_WARMUP_PAIRS = [
    ("\\frac{7}{2}", "3.5"), ("\\frac{\\sqrt{2}}{2}", "\\sqrt{3}"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi)"), ("[-2,7]", "(-\\infty, 3]"), ("(x+1)^2", "x^2+1"),
    ("\\log_2 8", "2^{10}"), ("10\\%", "0.1"), ("\\text{(C)}", "D"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}"),
    ("x \\in [-2,7]", "\\{1,2\\}"), ("2\\pi", "6.28"), ("e^{i\\pi}", "x=3"),
    ("\\dfrac{1}{\\sqrt{3}}", "\\sin 30^\\circ"),
]


def warmup() -> None:
    """Import math-verify and exercise common answer shapes (see ``_WARMUP_PAIRS``)."""
    mv = _mv()
    for gold, pred in _WARMUP_PAIRS:
        mv.verify(_parse_expression(gold), _parse_expression(pred), timeout_seconds=None)
    mv.verify(_parse_expression("7"), _parse("so the final answer is $\\frac{7}{2}$"), timeout_seconds=None)
