"""Countdown (TinyZero): build ``target`` from ``nums`` with + - * / and parentheses, each number once.

The equation is the content of the last ``<answer>…</answer>``. It must contain only ASCII digits,
``+ - * / ( ) .`` and spaces/tabs/newlines, use exactly the multiset ``nums``, and evaluate within 1e-5
of ``target``. Length limits count the expression after whitespace normalisation (runs of spaces,
tabs and newlines become one space, ends stripped): a valid equation followed by a page of blank
lines is still valid, while a genuinely long expression is refused before it is parsed. It is
evaluated by walking the Python AST over those operators only (never ``eval``): ``**`` parses as
``Pow`` and is rejected, names/calls/attributes cannot pass the character check, and length and
magnitude limits keep every evaluation to microseconds.
"""
from __future__ import annotations

import ast
import math
import re
from typing import Any, Mapping

from mindrl.rewards.extract import last_tag_content

_ALLOWED = re.compile(r"[0-9+\-*/(). \t\r\n]+")  # ASCII only: "\d" and "\s" would admit unicode digits/spaces
_WHITESPACE = re.compile(r"[ \t\r\n]+")  # the only whitespace _ALLOWED admits
_NUMBERS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


class _Reject(Exception):
    """The expression is outside the allowed grammar or limits."""


def normalize_whitespace(expr: str) -> str:
    """Runs of ASCII whitespace -> one space, ends stripped: the form the length limit applies to.

    Linear in ``len(expr)`` (one regex pass), so even megabytes of padding cost milliseconds."""
    return _WHITESPACE.sub(" ", expr).strip(" ")


def safe_eval(expr: str, *, max_chars: int = 256, max_abs: float = 1e12) -> float | None:
    """Value of an arithmetic expression over + - * / and unary +/-, or None if it is not one.

    None for: anything longer than ``max_chars`` after whitespace normalisation (``normalize_whitespace``;
    newlines outside () would be a syntax error), any syntax outside the grammar, division by zero, any
    literal or intermediate result with magnitude above ``max_abs`` (so no evaluation can grow).
    """
    expr = normalize_whitespace(expr)
    return None if len(expr) > max_chars else _evaluate(expr, max_abs)


def _evaluate(expr: str, max_abs: float) -> float | None:
    """`safe_eval` on an expression already whitespace-normalised and within the length limit."""
    try:
        tree = ast.parse(expr, mode="eval")
        return _eval(tree.body, max_abs)
    except (_Reject, SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError, OverflowError):
        return None


def _eval(node: ast.AST, max_abs: float) -> float:
    kind = type(node)
    if kind is ast.BinOp and type(node.op) in _BINOPS:
        value = _BINOPS[type(node.op)](_eval(node.left, max_abs), _eval(node.right, max_abs))
    elif kind is ast.UnaryOp and type(node.op) in (ast.USub, ast.UAdd):
        value = _eval(node.operand, max_abs)
        value = -value if type(node.op) is ast.USub else value
    elif kind is ast.Constant and type(node.value) in (int, float):  # not bool, str, complex, None
        value = float(node.value)
    else:
        raise _Reject(kind.__name__)
    if not math.isfinite(value) or abs(value) > max_abs:
        raise _Reject("magnitude")
    return value


def countdown_reward(completion: str, labels: Mapping[str, Any], *, tolerance: float = 1e-5,
                     max_chars: int = 256, max_abs: float = 1e12) -> float:
    """1.0 iff the last ``<answer>`` equation uses each of ``nums`` once and equals ``target``."""
    nums, target = labels["nums"], labels["target"]
    expr = last_tag_content(completion, "answer")
    if expr is None or not _ALLOWED.fullmatch(expr):  # linear scan; rejects any other character
        return 0.0
    expr = normalize_whitespace(expr)
    if len(expr) > max_chars:  # a long expression is refused here, before any parsing
        return 0.0
    # Each given number exactly once, as a multiset of literal values. Literals are read whole, so
    # "2.5" is 2.5 (not given), not a use of 2 and 5, as TinyZero's "\d+" count would have it.
    if sorted(map(float, _NUMBERS.findall(expr))) != sorted(map(float, nums)):
        return 0.0
    value = _evaluate(expr, max_abs)  # normalised and length-checked above
    return 1.0 if value is not None and abs(value - float(target)) < tolerance else 0.0
