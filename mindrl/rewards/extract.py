"""Answer extraction shared by the scorers: last ``\\boxed{}``, last ``<answer>`` block, plain numbers.

Everything here is linear-time string scanning (no backtracking regexes over the whole completion),
because completions can be tens of thousands of characters and a scorer runs on every rollout.
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Mapping

# Label keys tried, in order, for the gold answer: ``label`` is ours; the others are what the raw
# datasets call it (MATH-500/GSM8K ``answer``, Math23K ``ans``, verl ``ground_truth``).
GOLD_KEYS = ("label", "answer", "ans", "ground_truth")

_BOXED_COMMANDS = ("\\boxed", "\\fbox")


def gold_answer(labels: Mapping[str, Any], keys: tuple[str, ...] = GOLD_KEYS) -> Any:
    """The gold answer from a row's labels; KeyError (counted as a scorer error) when there is none."""
    for key in keys:
        if key in labels and labels[key] is not None:
            return labels[key]
    raise KeyError(f"no gold answer in labels: expected one of {list(keys)}, got keys {sorted(labels)}")


def _braced(text: str, open_pos: int) -> str | None:
    """Content of the brace group opening at text[open_pos] == '{', or None if it never closes."""
    depth = 0
    for i in range(open_pos, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_pos + 1:i]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``), nested braces allowed.

    Like MATH's ``last_boxed_only_string``: only the last occurrence counts, and if it never closes
    (a truncated completion) there is no boxed answer.
    """
    start = max(text.rfind(cmd) for cmd in _BOXED_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOXED_COMMANDS if text.startswith(c, start))
    after = start + len(cmd)
    i = after
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        return _braced(text, i)
    if i > after:  # "\boxed 5": the token up to the next space or $
        m = re.compile(r"[^\s$]+").match(text, i)
        return m.group(0) if m else None
    return None


def last_tag_content(text: str, tag: str = "answer") -> str | None:
    """Content of the last *closed* ``<tag>...</tag>`` pair, or None.

    Found from the end: the last ``</tag>``, then the nearest ``<tag>`` before it. This ignores an
    unclosed trailing ``<tag>`` and, for ``<tag> <tag>x</tag>``, returns the innermost ``x``.
    """
    close = text.rfind(f"</{tag}>")
    if close < 0:
        return None
    open_ = text.rfind(f"<{tag}>", 0, close)
    if open_ < 0:
        return None
    return text[open_ + len(tag) + 2:close]


# A plain number: optional sign, digits with optional thousands commas, optional decimals.
# A sign counts only when it does not follow a word or ")", so "10-3" is 10 and 3, not 10 and -3.
_SIGN = r"(?:(?<![\w).])[-+])?"
_NUMBER = re.compile(_SIGN + r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")


def last_number(text: str) -> Fraction | None:
    """The last plain number anywhere in ``text`` (GSM8K-style flexible extraction)."""
    last = None
    for last in _NUMBER.finditer(text):
        pass
    return None if last is None else Fraction(last.group(0).replace(",", ""))


# A "+" written as a sign in prose: "the answer is +12", "Final answer: +5.0", "#### +24", "rose by +8".
# It follows a prose word (two or more letters, not a \command), ":", "=", "#" or a line start, and
# precedes a number. math-verify's plain-text number extraction does not accept a leading "+", so
# these finals were read as nothing (or as an earlier number). Only text outside $…$ is touched:
# inside math, "ab +2" is a sum and math-verify parses "$+12$" itself.
_PROSE_PLUS = re.compile(r"(?P<pre>^|[:=#]|(?<![\\A-Za-z])[A-Za-z]{2,})(?P<sp>[ \t]*)\+(?=\.?\d)", re.MULTILINE)
_DOLLAR = re.compile(r"(?<!\\)\$")  # an unescaped $ (\$12 is currency, not math)


def drop_prose_plus_signs(text: str) -> str:
    """``'So the answer is +12'`` -> ``'So the answer is 12'``; ``'$x +2$'`` and ``'3 +4'`` unchanged."""
    if "+" not in text:
        return text
    parts = _DOLLAR.split(text)
    if len(parts) % 2 == 0:  # an unclosed $: leave the text alone rather than guess what is math
        return text
    sep = iter(m.group(0) for m in _DOLLAR.finditer(text))
    out = []
    for i, part in enumerate(parts):
        out.append(_PROSE_PLUS.sub(r"\g<pre>\g<sp>", part) if i % 2 == 0 else part)
        if i < len(parts) - 1:
            out.append(next(sep))
    return "".join(out)


_ESCAPED_DOLLAR_AMOUNT = re.compile(r"\\\$\s*(?=[-+]?\.?\d)")  # "\$62" in a LaTeX-written solution
_DISPLAY_END_STOP = re.compile(r"\.\s*(?=\\[\])])")  # "\[ M . \]", "\( x. \)": the sentence's full stop
# $$…$$ or $…$ (an escaped \$ inside is content); group "body" is what lies between the dollars.
_DOLLAR_MATH = re.compile(r"(?P<open>\$\$|(?<!\\)\$)(?P<body>(?:[^$\\]|\\.)*?)(?P=open)", re.DOTALL)
_END_STOP = re.compile(r"\.\s*$")
# "$x$" as a variable's name in a sentence ("the 11 values of $x$ are distinct"): math-verify takes
# the last formula as the answer, so that mention wins over the answer before it. Not e, i, \pi or
# \infty (constants that are answers), and not right after "is", "answer", "be", "choose", "option",
# "choice", ":" or "=" (there the symbol is the answer: "the answer is $B$").
_SYMBOL = r"(?:[a-df-hj-zA-Z]|\\(?:alpha|beta|gamma|delta|theta|lambda|mu|phi|omega))"
_MENTION = re.compile(r"(?<![\w\\$])(?P<cue>(?:\b(?i:is|answer|be|choose|option|choice)|[:=])\s*)?"
                      r"\$\s*(?P<sym>" + _SYMBOL + r")\s*\.?\s*\$(?!\$)")
_LONE_SYMBOL = re.compile(r"\s*" + _SYMBOL + r"\s*\.\s*")  # "$x.$", "$\theta.$": a mention, not an answer
# An aligned derivation, with its math delimiters if any. math-verify parses none of these
# environments, so a solution ending "\begin{align*} z &= … \\ &= 6 - 5i. \end{align*}" was read
# as an earlier formula or a stray number.
_ALIGNED = re.compile(r"(?:\\\[|\$\$)?\s*\\begin\{(align\*?|aligned|eqnarray\*?|gather\*?|split)\}(?P<body>.*?)"
                      r"\\end\{\1\}\s*(?:\\\]|\$\$)?", re.DOTALL)
_ROW_BREAK = re.compile(r"\\\\(?:\[[^\]]*\])?")  # "\\" or "\\[4pt]"
_ROW_NOISE = re.compile(r"&|\\(?:nonumber|notag|label\{[^{}]*\}|tag\{[^{}]*\})")
_ROW_LEAD = re.compile(r"^(?:\s|\\q?quad|\\Rightarrow|\\implies|\\Longrightarrow|\\therefore|\\[,;:!])+")
_RELATION_START = re.compile(r"\s*(?:=|<|>|\\le|\\ge|\\approx|\\equiv)")
_INEQUALITY = re.compile(r"\\(?:geq?|leq?|neq|approx)\b|[<>]")
_BARE_MATRIX = re.compile(r"\\begin\{([pbvBV]?matrix|array)\}.*?\\end\{\1\}", re.DOTALL)
_MATH_OPENERS = ("$", "\\(", "\\[")


def _drop_end_stop(m: re.Match) -> str:
    body = m.group("body")
    if not body.rstrip().endswith(".") or _LONE_SYMBOL.fullmatch(body):
        return m.group(0)
    return m.group("open") + _END_STOP.sub("", body) + m.group("open")


def _last_statement(m: re.Match) -> str:
    """An aligned block -> ``$…$`` holding its last statement: the last row that does not start with
    a relation, joined with the rows continuing it (``z &= a \\\\ &= b`` -> ``$z = a = b$``)."""
    rows = [_ROW_LEAD.sub("", _ROW_NOISE.sub(" ", row)).strip() for row in _ROW_BREAK.split(m.group("body"))]
    rows = [row for row in rows if row]
    if not rows:
        return m.group(0)
    first = len(rows) - 1
    while first > 0 and _RELATION_START.match(rows[first]):
        first -= 1
    statement = " ".join(rows[first:]).rstrip(" .,;")
    # "a = b \ge c = 16": an equation chain after the last inequality is the result (c = 16);
    # math-verify cannot take the right-hand side of a mixed chain. "x \le 3" stays as it is.
    last = None
    for last in _INEQUALITY.finditer(statement):
        pass
    if last is not None and "=" in statement[last.end():]:
        statement = statement[last.end():].strip()
    return f" ${statement}$ "


def normalize_free_text(text: str) -> str:
    """Rewrite a free-text answer so that math-verify's extraction reads the answer a grader would.

    Each rule fixes a way its regexes misread a final answer, without touching the math itself:

    * U+2212 (−) becomes "-": "the answer is −3" was read as 3.
    * a sign "+" in prose is dropped (``drop_prose_plus_signs``): "So the answer is +12" was read as
      nothing, "Final answer: +5.0" as an earlier number.
    * "\\$62" (an escaped dollar, as LaTeX-written solutions price things) becomes "62": the number
      regex needs a space or "=" before it, so "spends \\$62" was skipped and an earlier number won.
    * a full stop just before the end of math (``\\]``, ``\\)``, ``$``, ``$$``) is dropped:
      ``$b = \\frac{7}{4}.$`` and ``\\[ \\begin{pmatrix}…\\end{pmatrix}. \\]`` failed to parse, and
      the extraction fell back to an earlier formula or to the matrix's last entry. Not a comma:
      ``$x = 1,$ and $y = 2$`` is two statements, which math-verify would otherwise merge into one
      answer; and not after a lone symbol: "values of $x.$" mentions x, it does not answer x.
    * such a mention loses its ``$``: in "there are $11$ values of $x$ in all" the answer is 11,
      but math-verify reads the last formula, x (see ``_MENTION`` for what stays math).
    * an aligned derivation (``align*``, ``aligned``, ``eqnarray``, …), which math-verify cannot
      parse, becomes ``$…$`` holding its last statement: ``z &= … \\\\ &= 6 - 5i.`` -> ``$z = … = 6 - 5i$``.
    * a matrix written without any math delimiters is put in ``$…$``: math-verify only parses
      LaTeX inside delimiters (and read the last entry as the answer).
    """
    text = text.replace("\u2212", "-")
    text = drop_prose_plus_signs(text)
    if "\\$" in text:
        text = _ESCAPED_DOLLAR_AMOUNT.sub("", text)
    if "\\]" in text or "\\)" in text:
        text = _DISPLAY_END_STOP.sub("", text)
    if "$" in text:
        text = _DOLLAR_MATH.sub(_drop_end_stop, text)
        text = _MENTION.sub(lambda m: m.group(0) if m.group("cue") else m.group("sym"), text)
    if "\\begin" in text:
        text = _ALIGNED.sub(_last_statement, text)
        if not any(m in text for m in _MATH_OPENERS):
            text = _BARE_MATRIX.sub(lambda m: f"${m.group(0)}$", text)
    return text


def strip_math_delimiters(text: str) -> str:
    """Remove surrounding ``$...$``, ``\\(...\\)``, ``\\[...\\]`` and whitespace from an answer string."""
    s = text.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left):len(s) - len(right)].strip()
    return s
