"""``acc``/``base_acc``: answer extraction and equivalence, as a table in the style of math-verify's and
MATH's equivalence tests (pred, gold, expected), about half of them negatives.

All cases are scored in one sandbox call (two warm workers) and each case then asserts its own row,
so a timeout can never pass for a 0.
"""
from __future__ import annotations

import pytest

from mindrl.rewards.math_acc import acc_reward, base_acc_reward, extract_prediction
from mindrl.rewards.sandbox import OK, RewardSandbox

B = "\\boxed"

# (completion, gold label, expected acc)
CASES: list[tuple[str, object, float]] = [
    # fractions, decimals, integers
    (f"{B}{{3.5}}", "\\frac{7}{2}", 1), (f"{B}{{\\frac{{7}}{{2}}}}", "3.5", 1), (f"{B}{{7/2}}", "\\frac72", 1),
    (f"{B}{{\\dfrac{{14}}{{4}}}}", "\\frac{7}{2}", 1), (f"{B}{{3}}", "\\frac{7}{2}", 0), (f"{B}{{\\frac{{7}}{{3}}}}", "\\frac{7}{2}", 0),
    (f"{B}{{\\frac{{9}}{{4}}}}", "2.25", 1), (f"{B}{{9/4}}", "2.26", 0), (f"{B}{{-5}}", "-5", 1), (f"{B}{{5}}", "-5", 0),
    (f"{B}{{5.0}}", "5", 1), (f"{B}{{5.0000001}}", "5", 1), (f"{B}{{5.01}}", "5", 0), (f"{B}{{5.000001}}", "5", 0),
    (f"{B}{{0.333333}}", "\\frac{1}{3}", 1), (f"{B}{{0.33}}", "\\frac{1}{3}", 0), (f"{B}{{2^{{10}}}}", "1024", 1),
    (f"{B}{{1023}}", "1024", 0), (f"{B}{{1,000}}", "1000", 1), (f"{B}{{1000}}", "1,000", 1), (f"{B}{{100}}", "1,000", 0),
    # units, percent, currency, degrees
    (f"{B}{{10\\%}}", "10\\%", 1), (f"{B}{{10}}", "10\\%", 1), (f"{B}{{0.1}}", "10\\%", 0), (f"{B}{{11\\%}}", "10\\%", 0),
    (f"{B}{{10^\\circ}}", "10", 1), (f"{B}{{\\$18.90}}", "18.90", 1), (f"{B}{{18.9}}", "18.90", 1), (f"{B}{{19}}", "18.90", 0),
    (f"{B}{{\\frac{{1}}{{2}}\\text{{ cm}}}}", "\\frac{1}{2}", 1),
    # radicals, pi, logs, polynomials
    (f"{B}{{\\sqrt{{2}}/2}}", "\\frac{\\sqrt{2}}{2}", 1), (f"{B}{{\\frac{{1}}{{\\sqrt{{2}}}}}}", "\\frac{\\sqrt{2}}{2}", 1),
    (f"{B}{{\\sqrt{{3}}}}", "\\frac{\\sqrt{2}}{2}", 0), (f"{B}{{2\\sqrt{{3}}}}", "2 \\sqrt{3}", 1), (f"{B}{{\\sqrt{{12}}}}", "2 \\sqrt{3}", 1),
    (f"{B}{{3\\sqrt{{2}}}}", "2 \\sqrt{3}", 0), (f"{B}{{2\\pi}}", "2\\pi", 1), (f"{B}{{6.28}}", "2\\pi", 0), (f"{B}{{\\log_2 8}}", "3", 1),
    (f"{B}{{x^2+2x+1}}", "(x+1)^2", 1), (f"{B}{{x^2+1}}", "(x+1)^2", 0), (f"{B}{{2x}}", "x*2", 1), (f"{B}{{y}}", "x", 0),
    # equations, tuples, sets, intervals, matrices
    (f"{B}{{x=3}}", "3", 1), (f"{B}{{3}}", "x=3", 1), (f"{B}{{x=4}}", "3", 0),
    (f"{B}{{(3, \\frac{{\\pi}}{{2}})}}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1),
    (f"{B}{{(\\frac{{\\pi}}{{2}}, 3)}}", "\\left( 3, \\frac{\\pi}{2} \\right)", 0),
    (f"{B}{{1, 2, 3}}", "1,2,3", 1), (f"{B}{{3, 2, 1}}", "1,2,3", 1), (f"{B}{{1,2}}", "1,2,3", 0), (f"{B}{{\\{{1,2\\}}}}", "\\{1,2\\}", 1),
    (f"{B}{{[-2, 7]}}", "[-2,7]", 1), (f"{B}{{(-2, 7)}}", "[-2,7]", 0), (f"{B}{{x \\in [-2,7]}}", "x \\in [-2,7]", 1),
    (f"{B}{{(-\\infty, 3]}}", "(-\\infty,3]", 1), (f"{B}{{(-\\infty, 3)}}", "(-\\infty,3]", 0), (f"{B}{{\\infty}}", "\\infty", 1),
    (f"{B}{{\\begin{{pmatrix}} 1 \\\\ 2 \\end{{pmatrix}}}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", 1),
    (f"{B}{{\\begin{{pmatrix}} 2 \\\\ 1 \\end{{pmatrix}}}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", 0),
    # multiple choice and text
    (f"{B}{{\\text{{(C)}}}}", "\\text{(C)}", 1), (f"{B}{{C}}", "\\text{(C)}", 1), (f"{B}{{D}}", "\\text{(C)}", 0),
    (f"{B}{{\\text{{Evelyn}}}}", "\\text{Evelyn}", 1), (f"{B}{{\\text{{Bob}}}}", "\\text{Evelyn}", 0), (f"{B}{{a}}", "b", 0),
    # which answer counts: last boxed, else last <answer>, else math-verify on the text
    (f"{B}{{3}} ... wait, {B}{{4}}", "4", 1), (f"{B}{{3}} ... wait, {B}{{4}}", "3", 0),
    (f"<answer>4</answer> {B}{{5}}", "5", 1), (f"{B}{{5}} <answer>4</answer>", "4", 0),
    (f"{B}{{{{5}}}}", "5", 1), (f"{B} 5$", "5", 1), ("\\fbox{5}", "5", 1), (f"$x = {B}{{\\frac{{1}}{{2}}}}$.", "0.5", 1),
    ("<answer>7/2</answer>", "3.5", 1), ("<answer> The answer is 12 </answer>", "12", 1), ("<answer> 13 </answer>", "12", 0),
    ("<answer>1</answer> <answer>2</answer>", "2", 1), ("<answer>1</answer> <answer>2</answer>", "1", 0),
    ("so the answer is 7/2", "\\frac{7}{2}", 1), ("so the answer is 5/2", "\\frac{7}{2}", 0),
    ("The final answer is $\\frac{7}{2}$.", "3.5", 1), ("First 3+4=7. Then the final answer is 12.", "12", 1),
    ("First 3+4=7. Then the final answer is 12.", "7", 0), ("no answer here", "5", 0), ("", "5", 0), (f"{B}{{}}", "5", 0),
    # gold normalisation: $…$, boxed gold, GSM8K-style '#### n', numbers, lists of acceptable answers
    (f"{B}{{72}}", "$72$", 1), (f"{B}{{72}}", f"{B}{{72}}", 1), (f"{B}{{72}}", "He sold 72.\n#### 72", 1),
    (f"{B}{{72}}", 72, 1), (f"{B}{{0.5}}", 0.5, 1), (f"{B}{{73}}", 72, 0),
    (f"{B}{{5}}", ["5", "five"], 1), (f"{B}{{6}}", ["5", "5.0"], 0),
]


@pytest.fixture(scope="module")
def scored():
    completions = [c for c, _, _ in CASES]
    labels = [{"label": g} for _, g, _ in CASES]
    with RewardSandbox(num_workers=2, timeout=30.0) as box:  # generous: a cold parse on a loaded CI box
        return box.score([acc_reward], completions, labels)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[:40]!r}~{g!r}" for c, g, _ in CASES])
def test_acc_equivalence(scored, index):
    completion, gold, expected = CASES[index]
    assert scored.status[index] == [OK], scored.error_messages
    assert scored.values[index] == [float(expected)], f"acc({completion!r}, gold={gold!r})"


def test_table_has_many_negatives():
    assert sum(e == 0 for _, _, e in CASES) >= 35


def test_truncated_box_falls_back_to_the_text():
    # An unclosed last \boxed is no boxed answer (MATH's rule); the text fallback still reads 1/2.
    assert extract_prediction(f"so {B}{{3}} then {B}{{\\frac{{1}}{{2}}")[1] == "text"
    assert extract_prediction(f"{B}{{a{{b}}c}} end") == ("a{b}c", "boxed")


def test_missing_gold_is_an_error():
    with pytest.raises(KeyError, match="no gold answer"):
        acc_reward(f"{B}{{1}}", {"nums": [1]})


@pytest.mark.parametrize("completion,expected", [
    (f"<think>x</think> <answer>{B}{{3.5}}</answer>", 1.0),  # format and answer both right
    (f"<think>x</think> <answer>{B}{{3}}</answer>", 0.0),  # format right, answer wrong
    (f"{B}{{3.5}}", 0.0),  # answer right, no format
    (f"<think>x</think> <answer>3.5</answer> extra", 0.0),  # text after </answer>
])
def test_base_acc_needs_format_and_answer(completion, expected):
    assert base_acc_reward(completion, {"label": "\\frac{7}{2}"}) == expected


def test_base_acc_prefix():
    completion = f"reasoning</think>\n<answer>{B}{{3.5}}</answer>"
    assert base_acc_reward(completion, {"label": "7/2"}, prefix="<think>") == 1.0
    assert base_acc_reward(completion, {"label": "7/2"}) == 0.0
