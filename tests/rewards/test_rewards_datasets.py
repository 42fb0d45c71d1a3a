"""``gsm8k`` and ``math23k`` on hand-written tables and on the real answer files in ../shared/data.

For the real files each gold answer is rewritten into equivalent and non-equivalent predictions
whose expected reward is known by construction (the value is computed here independently, with a
separate tiny parser, never with the scorer's own code).
"""
from __future__ import annotations

import json
import re
from fractions import Fraction

import pytest

from mindrl.rewards.gsm8k import gsm8k_reward
from mindrl.rewards.math23k import last_value, math23k_reward
from tests.conftest import shared_path

# ------------------------------------------------------------------------------------------ GSM8K

GSM8K_CASES = [  # (completion, gold label, expected)
    ("So she has \\boxed{72} clips.", "#### 72", 1), ("\\boxed{72.00}", "72", 1), ("\\boxed{\\$72}", "72", 1),
    ("\\boxed{73}", "72", 0), ("<answer>72 clips</answer>", "72", 1), ("<answer>18 dollars, not 72</answer>", "72", 1),
    ("<answer>72 dollars, not 18</answer>", "72", 0), ("The total is 1,000 dollars", "#### 1,000", 1),
    ("\\boxed{1000}", "#### 1,000", 1), ("\\boxed{1,000}", "1000", 1), ("\\boxed{100}", "1000", 0),
    ("48/2 = 24\n#### 24", "24", 1), ("#### 24\nActually 25", "24", 0), ("She earned 10-3 = 7 dollars.", "7", 1),
    ("The change is -5 degrees.", "-5", 1), ("The change is 5 degrees.", "-5", 0), ("no number", "5", 0),
    ("1. First, 2. then the answer is 3", "3", 1), ("It costs $2.50 each, so 5.", "5", 1),
    ("Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n#### 72", 72, 1),
    # open-instruct's verifier style: explicit sign, trailing .0; a U+2212 minus is a minus
    ("So the answer is +12", "12", 1), ("Final answer: 5.0", "5", 1), ("Final answer: 5.0", "12", 0),
    ("#### +24.0", "24", 1), ("The change is \u22125 degrees.", "-5", 1), ("The change is \u22125 degrees.", "5", 0),
]


@pytest.mark.parametrize("completion,gold,expected", GSM8K_CASES)
def test_gsm8k_table(completion, gold, expected):
    assert gsm8k_reward(completion, {"label": gold}) == float(expected)


def test_gsm8k_gold_without_number_is_an_error():
    with pytest.raises(ValueError, match="no number"):
        gsm8k_reward("\\boxed{1}", {"label": "#### none"})


def _gsm8k_rows():
    rows = []
    for name in (("gsm8k", "train.jsonl"), ("eval", "gsm8k_test.jsonl")):
        with shared_path("data", *name).open(encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    return rows


def test_gsm8k_real_answers():
    rows = _gsm8k_rows()
    assert len(rows) == 7473 + 1319
    checked = 0
    for row in rows[::7]:  # ~1,250 rows, including all comma and negative answers below
        gold_text = row["answer"].rsplit("####", 1)[1].strip()
        value = int(gold_text.replace(",", ""))
        labels = {"label": row["answer"]}  # the full solution: the scorer must find "#### n"
        assert gsm8k_reward(f"So the answer is \\boxed{{{value:,}}}.", labels) == 1.0, gold_text
        assert gsm8k_reward(f"<answer>{value}</answer>", labels) == 1.0, gold_text
        assert gsm8k_reward(f"Adding up: {value + 3} - 3 = {value}", labels) == 1.0, gold_text
        assert gsm8k_reward(f"\\boxed{{{value + 1}}}", labels) == 0.0, gold_text
        assert gsm8k_reward(f"The answer is {value}.\n#### {value * 10 + 1}", labels) == 0.0, gold_text
        checked += 1
    for row in rows:  # every gold with a comma or a minus sign
        gold_text = row["answer"].rsplit("####", 1)[1].strip()
        if "," in gold_text or "-" in gold_text:
            value = int(gold_text.replace(",", ""))
            assert gsm8k_reward(f"\\boxed{{{gold_text}}}", {"label": row["answer"]}) == 1.0, gold_text
            assert gsm8k_reward(f"\\boxed{{{value}}}", {"label": gold_text}) == 1.0, gold_text
            assert gsm8k_reward(f"\\boxed{{{-value}}}", {"label": gold_text}) == 0.0, gold_text
            checked += 1
    assert checked > 1300


# ---------------------------------------------------------------------------------------- Math23K

MATH23K_CASES = [  # (completion, Math23K gold, expected)
    ("答：这段布还剩9米。", "9", 1), ("\\boxed{9}", "9", 1), ("\\boxed{10}", "9", 0), ("x=6/(2/5)-6=9", "9", 1),
    ("\\boxed{\\frac{7}{15}}", "((7)/(15))", 1), ("\\boxed{7/15}", "((7)/(15))", 1), ("15分之7", "((7)/(15))", 1),
    ("\\boxed{0.4667}", "((7)/(15))", 1), ("\\boxed{0.47}", "((7)/(15))", 0), ("\\boxed{\\frac{8}{15}}", "((7)/(15))", 0),
    ("\\boxed{((7)/(15))}", "((7)/(15))", 1), ("\\boxed{15/7}", "((7)/(15))", 0),
    ("\\boxed{19\\frac{3}{4}}", "19((3)/(4))", 1), ("19又3/4", "19((3)/(4))", 1), ("19又4分之3", "19((3)/(4))", 1),
    ("\\boxed{\\frac{79}{4}}", "19((3)/(4))", 1), ("\\boxed{19.75}", "19((3)/(4))", 1),
    ("\\boxed{14.25}", "19((3)/(4))", 0),  # 19 * 3/4: the mixed number is not a product
    ("\\boxed{19((3)/(4))}", "19((3)/(4))", 1), ("\\boxed{19}", "19((3)/(4))", 0),
    ("\\boxed{25\\%}", "25%", 1), ("占全班的25%", "25%", 1), ("\\boxed{0.25}", "25%", 1), ("\\boxed{25}", "25%", 1),
    ("百分之25", "25%", 1), ("\\boxed{2500\\%}", "25%", 0), ("\\boxed{26\\%}", "25%", 0), ("\\boxed{0.26}", "25%", 0),
    ("\\boxed{12.5\\%}", "12.5%", 1), ("\\boxed{\\frac{1}{8}}", "12.5%", 1), ("\\boxed{25\\%}", "0.25", 1), ("\\boxed{25}", "0.25", 0),
    ("\\boxed{2.5}", "2.5", 1), ("\\boxed{\\frac{5}{2}}", "2.5", 1), ("\\boxed{2.50}", "2.5", 1), ("\\boxed{2.6}", "2.5", 0),
    ("<answer>共 605 千克</answer> 其他 7", "605", 1), ("没有答案", "605", 0), ("", "605", 0), ("\\boxed{1,200}", "1200", 1),
    ("温度是-5度", "-5", 1), ("20-5", "15", 0), ("20-5=15", "15", 1),
]


@pytest.mark.parametrize("completion,gold,expected", MATH23K_CASES)
def test_math23k_table(completion, gold, expected):
    assert math23k_reward(completion, {"label": gold}) == float(expected)


def _gold_value(ans: str) -> tuple[Fraction, str]:
    """Independent reading of MWPToolkit answer strings: value and form."""
    if m := re.fullmatch(r"(\d+)\(\((\d+)\)/\((\d+)\)\)", ans):
        return int(m[1]) + Fraction(int(m[2]), int(m[3])), "mixed"
    if m := re.fullmatch(r"\(\((\d+)\)/\((\d+)\)\)", ans):
        return Fraction(int(m[1]), int(m[2])), "fraction"
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)%", ans):
        return Fraction(m[1]) / 100, "percent"
    return Fraction(ans), "number"


def test_math23k_real_answers():
    rows = []
    for name in ("math23k_test.json", "math23k_valid.json"):
        rows += json.loads(shared_path("data", "math23k", name).read_text(encoding="utf-8"))
    assert len(rows) == 2317 + 2316
    forms = {"mixed": 0, "fraction": 0, "percent": 0, "number": 0}
    for row in rows:
        ans = row["ans"]
        value, form = _gold_value(ans)
        forms[form] += 1
        assert last_value(ans).value == value, ans  # the scorer reads every gold in the files
        labels = {"ans": ans}  # the raw MWPToolkit key
        assert math23k_reward(f"\\boxed{{{ans}}}", labels) == 1.0, ans
        assert math23k_reward(f"答：{float(value):.6f}", labels) == 1.0, ans
        assert math23k_reward(f"\\boxed{{{float(value + 1):.6f}}}", labels) == 0.0, ans
        if form in ("fraction", "mixed"):
            assert math23k_reward(f"\\boxed{{\\frac{{{value.numerator}}}{{{value.denominator}}}}}", labels) == 1.0, ans
            assert math23k_reward(f"{value.denominator}分之{value.numerator}", labels) == 1.0, ans
        if form == "mixed":
            whole, rest = divmod(value, 1)
            assert math23k_reward(f"\\boxed{{{whole}\\frac{{{rest.numerator}}}{{{rest.denominator}}}}}", labels) == 1.0, ans
            assert math23k_reward(f"{whole}又{rest.numerator}/{rest.denominator}", labels) == 1.0, ans
            product = whole * rest  # the misreading of 19((3)/(4)) as 19 * 3/4
            if product != value:
                assert math23k_reward(f"\\boxed{{{float(product):.6f}}}", labels) == 0.0, ans
        if form == "percent":
            pct = value * 100
            assert math23k_reward(f"\\boxed{{{float(pct):g}\\%}}", labels) == 1.0, ans
            assert math23k_reward(f"百分之{float(pct):g}", labels) == 1.0, ans
            assert math23k_reward(f"\\boxed{{{float(pct + 1):g}\\%}}", labels) == 0.0, ans
    assert forms["mixed"] > 30 and forms["fraction"] > 300 and forms["percent"] > 100
