"""``countdown``: correctness, number usage, and safety of the AST evaluator."""
from __future__ import annotations

import json
import time

import pytest

from mindrl.rewards.countdown import countdown_reward, normalize_whitespace, safe_eval
from tests.conftest import shared_path

N123 = ([1, 2, 3], 9)  # (nums, target): (1 + 2) * 3 = 9

CASES = [  # (completion, nums, target, expected)
    ("<think>...</think><answer>(1 + 2) * 3</answer>", *N123, 1),
    ("<answer> ( 1+2 )\n *\t3 </answer>", *N123, 1),  # whitespace, newline, tab
    ("<answer>3 * (2 + 1)</answer>", *N123, 1),  # any order
    ("<answer>(1 + 2) - 3</answer>", *N123, 0),  # wrong value
    ("<answer>(3 + 3) * 1 + 3</answer>", *N123, 0),  # 3 reused, 2 missing
    ("<answer>3 * 3</answer>", *N123, 0),  # 3 reused, 1 and 2 missing
    ("<answer>(1 + 2) * 3 + 0</answer>", *N123, 0),  # extra number
    ("<answer>(1 + 2) * 3 * 1</answer>", *N123, 0),  # 1 used twice
    ("<answer>9</answer>", *N123, 0),  # the target itself
    ("<answer>(6 / 2) + 1</answer>", [6, 2, 1], 4, 1),
    ("<answer>6 / (2 - 2)</answer>", [6, 2, 2], 4, 0),  # division by zero
    ("<answer>1 / 3 * 3</answer>", [1, 3, 3], 1, 1),  # 0.9999999999999999: within 1e-5
    ("<answer>-1 + 2 * 5</answer>", [1, 2, 5], 9, 1),  # unary minus is arithmetic
    ("<answer>3.0 * (1 + 2)</answer>", *N123, 1),  # 3.0 is the number 3
    ("<answer>2.5 * 10</answer>", [2, 5, 10], 25, 0),  # "2.5" is not a use of 2 and 5
    ("<answer>6 // 2 + 1</answer>", [6, 2, 1], 4, 0),  # floor division is not an allowed operator
    ("<answer>01 + 2 * 3</answer>", [1, 2, 3], 7, 0),  # leading zero: a Python syntax error
    # several / unclosed / nested answer tags: the last closed <answer> block counts
    ("<answer>1 + 2 + 3</answer> hmm <answer>(1 + 2) * 3</answer>", *N123, 1),
    ("<answer>(1 + 2) * 3</answer> hmm <answer>1 + 2 + 3</answer>", *N123, 0),
    ("<answer>(1 + 2) * 3", *N123, 0),  # never closed
    ("<answer>(1 + 2) * 3</answer><answer>1 + 2 + 3", *N123, 1),  # trailing unclosed tag ignored
    ("<answer><answer>(1 + 2) * 3</answer>", *N123, 1),
    ("(1 + 2) * 3", *N123, 0),  # no tags at all
    ("<answer></answer>", *N123, 0), ("<answer>   </answer>", *N123, 0),
    # unsafe or foreign syntax
    ("<answer>2 ** 3 + 1</answer>", [2, 3, 1], 9, 0),  # power
    ("<answer>9 ** 9 ** 9</answer>", [9, 9, 9], 9, 0),  # a power tower: rejected before evaluating
    ("<answer>__import__('os').system('true')</answer>", *N123, 0),
    ("<answer>abs(-9)</answer>", [9], 9, 0), ("<answer>(9).real</answer>", [9], 9, 0),
    ("<answer>[1, 2, 3]</answer>", *N123, 0), ("<answer>1 if 2 else 3</answer>", *N123, 0),
    ("<answer>1e1 - 1</answer>", [1, 1], 9, 0), ("<answer>0x9</answer>", [9], 9, 0),
    ("<answer>(1 + 2) × 3</answer>", *N123, 0), ("<answer>(1 + 2) ÷ 3 * 27</answer>", [1, 2, 3, 27], 27, 0),
    ("<answer>(1 + 2) * 3 − 0</answer>", [1, 2, 3, 0], 9, 0),  # U+2212 minus
    ("<answer>(１ + ２) * ３</answer>", *N123, 0),  # full-width digits
    ("<answer>(1 + 2) * 3 ;</answer>", *N123, 0), ("<answer>9999999999999999999 * 9999999999999 </answer>",
                                                   [9999999999999999999, 9999999999999], 1, 0),
]


@pytest.mark.parametrize("completion,nums,target,expected", CASES)
def test_countdown(completion, nums, target, expected):
    assert countdown_reward(completion, {"nums": nums, "target": target}) == float(expected)


# Length limits apply after whitespace normalisation (runs of ASCII whitespace -> one space, ends
# stripped): padding is not length. (completion, nums, target, expected)
PADDED = [
    ("<answer>(1 + 2) * 3" + " " * 5000 + "</answer>", *N123, 1),  # trailing spaces
    ("<answer>(1 + 2) * 3" + "\n" * 5000 + "</answer>", *N123, 1),  # trailing blank lines
    ("<answer>" + "\n \t" * 2000 + "(1 + 2) * 3\n\n</answer>", *N123, 1),  # leading padding
    ("<answer>(1 +" + " " * 3000 + "2) *\n\n\n\n 3</answer>", *N123, 1),  # inside the expression
    ("<answer>(1 + 2) * 3" + " " * 5000 + "+ 0</answer>", [1, 2, 3, 0], 9, 1),
    ("<answer>(1 + 2) - 3" + " " * 5000 + "</answer>", *N123, 0),  # padding does not make a wrong answer right
    ("<answer>(1 + 2) * 3" + "\u00a0" * 10 + "</answer>", *N123, 0),  # non-ASCII space: still refused
    ("<answer>(1 + 2) * 3" + " " * 300 + "x</answer>", *N123, 0),  # a letter after the padding
]


@pytest.mark.parametrize("completion,nums,target,expected", PADDED, ids=range(len(PADDED)))
def test_length_limit_after_whitespace_normalisation(completion, nums, target, expected):
    assert countdown_reward(completion, {"nums": nums, "target": target}) == float(expected)


def test_genuinely_long_expression_is_refused_at_the_limit():
    nums = [1] * 64
    expr = " + ".join(["1"] * 64)  # 253 characters: under the default max_chars=256
    assert len(expr) == 253
    assert countdown_reward(f"<answer>{expr}</answer>", {"nums": nums, "target": 64}) == 1.0
    longer = " + ".join(["1"] * 65)  # 257 characters: refused, however it is padded
    assert countdown_reward(f"<answer>{longer}</answer>", {"nums": [1] * 65, "target": 65}) == 0.0
    assert countdown_reward(f"<answer>\n{longer}\n</answer>", {"nums": [1] * 65, "target": 65}) == 0.0
    # max_chars is measured on the normalised text: 12 characters "(1 + 2) * 3" fits max_chars=11
    assert countdown_reward("<answer>  (1 +  2)\n*  3  </answer>", {"nums": [1, 2, 3], "target": 9},
                            max_chars=11) == 1.0
    assert countdown_reward("<answer>(1 + 2) * 3</answer>", {"nums": [1, 2, 3], "target": 9}, max_chars=10) == 0.0
    assert safe_eval("1 +" + " " * 1000 + "2") == 3.0 and safe_eval("1 + " * 100 + "1") is None


def test_normalize_whitespace():
    assert normalize_whitespace("  (1 +\t2)\r\n*   3 \n") == "(1 + 2) * 3"
    assert normalize_whitespace("\u00a01") == "\u00a01"  # only ASCII whitespace: the character check refuses the rest


def test_huge_inputs_return_fast():
    labels = {"nums": [1] * 50_001, "target": 50_001}
    t0 = time.perf_counter()
    assert countdown_reward("<answer>" + "1+" * 50_000 + "1</answer>", labels) == 0.0  # 100K characters
    assert countdown_reward("<answer>" + "(" * 5000 + "1" + ")" * 5000 + "</answer>", {"nums": [1], "target": 1}) == 0.0
    assert countdown_reward("<think>" + "x" * 1_000_000 + "</think><answer>(1 + 2) * 3</answer>",
                            {"nums": [1, 2, 3], "target": 9}) == 1.0
    # a megabyte of padding is normalised away in one linear pass; a 100K-character expression hidden
    # in padding is still refused before any parsing
    assert countdown_reward("<answer>(1 + 2) * 3" + " \n" * 500_000 + "</answer>", {"nums": [1, 2, 3], "target": 9}) == 1.0
    assert countdown_reward("<answer>" + "\n" * 500_000 + "1+" * 50_000 + "1</answer>", labels) == 0.0
    assert time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize("expr,value", [
    ("(1 + 2) * 3", 9.0), ("7 / 2", 3.5), ("-(4 - 6)", 2.0), ("+5", 5.0), ("2 ** 3", None), ("9 ** 9 ** 9", None),
    ("1e400", None), ("10 * 10", 100.0), ("999999 * 999999 * 999999", None),  # over max_abs 1e12
    ("1 / 0", None), ("x + 1", None), ("'a' * 3", None), ("True + 1", None), ("1j * 1j", None), ("(" * 300 + "1" + ")" * 300, None),
    ("", None), ("1 +", None), ("[1][0]", None), ("(lambda: 1)()", None), ("1 < 2", None), ("1 // 2", None), ("7 % 2", None),
])
def test_safe_eval(expr, value):
    assert safe_eval(expr) == value


def test_deep_nesting_is_rejected_not_crashing():
    assert safe_eval("(" * 300 + "1" + ")" * 300, max_chars=1000) is None  # the parser's own limit
    assert safe_eval("(" * 100 + "1" + ")" * 100) == 1.0


def test_real_countdown_rows():
    rows = [json.loads(line) for line in shared_path("data", "countdown", "countdown_test_1024.jsonl").open()]
    assert len(rows) == 1024
    for row in rows:
        nums, target = row["nums"], row["target"]
        # The sum uses every number once; its value is the target when we choose it to be.
        expr = " + ".join(str(n) for n in nums)
        total = sum(nums)
        assert countdown_reward(f"<answer>{expr}</answer>", {"nums": nums, "target": total}) == 1.0
        assert countdown_reward(f"<answer>{expr}</answer>", {"nums": nums, "target": total + 1}) == 0.0
        assert countdown_reward(f"<answer>{expr} + {nums[0]}</answer>", {"nums": nums, "target": total + nums[0]}) == 0.0
        assert countdown_reward(f"<answer>{' + '.join(map(str, nums[1:]))}</answer>",
                                {"nums": nums, "target": total - nums[0]}) == 0.0
        assert countdown_reward(f"<answer>{expr}</answer>", row) == float(total == target)
