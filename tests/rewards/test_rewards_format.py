"""Format and shaping scorers against hand-computed values."""
from __future__ import annotations

import pytest

from mindrl.rewards.format_rewards import (format_reward, reasoning_steps_reward, strict_format_reward,
                                           tag_count_reward, think_len_reward)
from mindrl.rewards.penalties import overlong_reward, repetition_penalty_reward, tokens

GOOD = "<think>a</think><answer>b</answer>"


@pytest.mark.parametrize("completion,prefix,expected", [
    (GOOD, "", 1), (" \n<think>a\nb</think>\n\n<answer> 7 </answer>\n", "", 1),
    ("a</think> <answer>b</answer>", "<think>", 1), ("a</think> <answer>b</answer>", "", 0),
    ("<think>a</think><answer>b</answer>", "<think>", 0),  # <think> twice once the prefix is added
    (GOOD + " extra", "", 0), ("hi " + GOOD, "", 0), (GOOD + "<answer>c</answer>", "", 0),
    ("<answer>b</answer><think>a</think>", "", 0), ("<think>a<answer>b</answer>", "", 0),
    ("<think>a</think>b<answer>c</answer>", "", 0), ("<think>a</think><answer>b<think>c</think></answer>", "", 0),
    ("<think>a</think><answer>b", "", 0), ("", "", 0), ("<think></think><answer></answer>", "", 1),
])
def test_format(completion, prefix, expected):
    assert format_reward(completion, {}, prefix=prefix) == float(expected)


@pytest.mark.parametrize("completion,expected", [
    ("<think>\na\n</think>\n<answer>\nb\n</answer>", 1), ("<think>\na\n</think>\n<answer>\nb\n</answer>\n", 1),
    ("<think>\na\n</think>\n<answer>\nb\n</answer>\njunk", 0),  # open-r1's MULTILINE "$" would accept this
    (GOOD, 0), ("<think>\na\n</think>\n\n<answer>\nb\n</answer>", 0), (" <think>\na\n</think>\n<answer>\nb\n</answer>", 0),
    ("<think>\na\n</think>\n<answer>\nb\n</answer>\n<answer>\nc\n</answer>", 0),
])
def test_strict_format(completion, expected):
    assert strict_format_reward(completion, {}) == float(expected)


def test_strict_format_prefix():
    assert strict_format_reward("\na\n</think>\n<answer>\nb\n</answer>", {}, prefix="<think>") == 1.0


@pytest.mark.parametrize("completion,expected", [
    ("<think>\na\n</think>\n<answer>\nb\n</answer>", 1.0), ("<think>\na</think><answer>b</answer>", 0.25),
    ("a\n</think>\n<answer>\nb", 0.5), ("", 0.0), ("<think>\n<think>\na\n</think>\n", 0.25),
    ("<think>\na\n</think>\n<answer>\nb\n</answer>\n<answer>\nc\n</answer>", 0.5),
])
def test_tag_count(completion, expected):
    assert tag_count_reward(completion, {}) == expected


@pytest.mark.parametrize("completion,prefix,expected", [
    ("<think>" + "x" * 11 + "</think>", "", 1), ("<think>" + "x" * 10 + "</think>", "", 0),  # strictly longer
    ("<think>  " + "x" * 10 + "\n\n </think>", "", 0),  # stripped
    ("x" * 11 + "</think>", "<think>", 1), ("x" * 11 + "</think>", "", 0), ("<think>" + "x" * 50, "", 0),
    ("<answer>" + "x" * 50 + "</answer>", "", 0),
])
def test_think_len(completion, prefix, expected):
    assert think_len_reward(completion, {}, prefix=prefix, min_chars=10) == float(expected)


def test_think_len_default_is_datawhale_1000():
    assert think_len_reward("<think>" + "y" * 1001 + "</think>", {}) == 1.0
    assert think_len_reward("<think>" + "y" * 1000 + "</think>", {}) == 0.0


@pytest.mark.parametrize("completion,expected", [
    ("Step 1: a\nStep 2: b\nStep 3: c", 1.0), ("First, a. Next, b.", 2 / 3), ("1. a\n2. b", 2 / 3),
    ("intro\n- a\n- b\n* c\nFinally, d", 1.0), ("", 0.0), ("just text, no steps", 0.0),
])
def test_reasoning_steps(completion, expected):
    assert reasoning_steps_reward(completion, {}) == pytest.approx(expected)


@pytest.mark.parametrize("text,n,expected", [
    ("a b c a b c", 3, -0.25),  # trigrams abc bca cab abc: 3 distinct of 4
    ("A b C a B c", 3, -0.25),  # case-insensitive
    ("a b c d e f", 3, 0.0), ("a a a a", 2, -2 / 3), ("a b", 3, 0.0), ("", 3, 0.0),
    ("我爱你我爱你", 3, -0.25),  # Chinese: character n-grams, same arithmetic as the first case
    ("我爱北京天安门", 3, 0.0), ("好好好好好", 2, -0.75),
    ("计算 3 + 4 计算 3 + 4", 2, -4 / 9),  # 10 tokens, 9 bigrams, 5 distinct (计算 算3 3+ +4 4计)
])
def test_repetition_penalty(text, n, expected):
    assert repetition_penalty_reward(text, {}, ngram_size=n) == pytest.approx(expected)


def test_repetition_tokens_split_cjk_per_character():
    assert tokens("计算 3 + 4 计算") == ["计", "算", "3", "+", "4", "计", "算"]
    assert tokens("Hello 世界!") == ["hello", "世", "界", "!"]


def test_repetition_penalty_scale_and_sign():
    assert repetition_penalty_reward("a b c a b c", {}, ngram_size=3, max_penalty=-0.5) == pytest.approx(-0.125)
    with pytest.raises(ValueError, match="max_penalty"):
        repetition_penalty_reward("a b c", {}, max_penalty=0.5)


@pytest.mark.parametrize("length,expected", [(50, 0.0), (80, 0.0), (85, -0.25), (90, -0.5), (100, -1.0), (150, -1.0)])
def test_overlong_dapo(length, expected):
    # max 100 tokens, buffer 20: free up to 80, then linear to -1 at 100 (DAPO eq. 13)
    assert overlong_reward("", {"response_length": length}, max_length=100, buffer=20) == pytest.approx(expected)


def test_overlong_options():
    assert overlong_reward("", {}, max_length=100, buffer=20, response_length=90, penalty_factor=2.0) == -1.0
    assert overlong_reward("", {"response_length": 10}, max_length=100, buffer=20, response_length=90) == -0.5
    with pytest.raises(ValueError, match="response length"):
        overlong_reward("", {}, max_length=100, buffer=20)
    with pytest.raises(ValueError, match="buffer"):
        overlong_reward("", {"response_length": 1}, max_length=100, buffer=200)
