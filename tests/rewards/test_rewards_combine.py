"""Weighted sums from config: totals, parts, metrics, and the errors a config typo gets."""
from __future__ import annotations

import pytest

from mindrl.rewards import SCORERS, build_reward_fn, build_reward_fn_from_config, get_scorer, resolve_scorers
from mindrl.rewards.sandbox import ERROR, OK, RewardSandbox
from tests.rewards import scorers_for_tests as S

THINK = "<think>" + "x" * 20 + "</think>"


@pytest.fixture(scope="module")
def box():
    with RewardSandbox(num_workers=2, timeout=5.0) as sandbox:
        yield sandbox


def test_weighted_sum_and_parts(box):
    fn = build_reward_fn(["format", "countdown", "think_len"], [1.0, 0.5, 2.0],
                         {"think_len": {"min_chars": 10}}, sandbox=box)
    completions = [
        f"{THINK}<answer>(1 + 2) * 3</answer>",  # format 1, countdown 1, think_len 1 -> 1 + 0.5 + 2
        f"{THINK}<answer>1 + 2 + 3</answer>",  # format 1, countdown 0, think_len 1 -> 3
        "<think>short</think><answer>(1 + 2) * 3</answer> trailing",  # 0, 1, 0 -> 0.5
        "no tags",  # 0
    ]
    out = fn(completions, [{"nums": [1, 2, 3], "target": 9}] * 4)
    assert out.parts == {"format": [1.0, 1.0, 0.0, 0.0], "countdown": [1.0, 0.0, 1.0, 0.0],
                         "think_len": [1.0, 1.0, 0.0, 0.0]}
    assert out.total == [3.5, 3.0, 0.5, 0.0]
    assert out.metrics["reward/mean"] == pytest.approx(7.0 / 4)
    assert out.metrics["reward/countdown/mean"] == 0.5
    assert out.metrics["reward/timeouts"] == 0 and out.metrics["reward/errors"] == 0
    assert out.status == {name: [OK] * 4 for name in ("format", "countdown", "think_len")}


def test_default_weights_and_failed_parts_get_the_fallback():
    with RewardSandbox(num_workers=1, timeout=5.0, fallback=-0.5) as sandbox:
        fn = build_reward_fn(["countdown", "format"], sandbox=sandbox)
        out = fn([f"{THINK}<answer>1</answer>"], [{"target": 1}])  # no "nums": countdown raises KeyError
    assert out.parts == {"countdown": [-0.5], "format": [1.0]}
    assert out.total == [0.5]
    assert out.status["countdown"] == [ERROR] and out.metrics["reward/countdown/errors"] == 1
    assert "KeyError" in out.error_messages[0]


def test_overlong_gets_response_lengths(box):
    fn = build_reward_fn(["overlong"], options={"overlong": {"max_length": 100, "buffer": 20}}, sandbox=box)
    out = fn(["a", "b", "c"], [{}, {}, {}], response_lengths=[10, 90, 120])
    assert out.parts["overlong"] == [0.0, -0.5, -1.0]


def test_custom_module_level_scorer(box):
    fn = build_reward_fn([S.length, "format"], [2.0, 1.0], {"length": {"scale": 0.5}}, sandbox=box)
    assert fn(["abcd"], [{}]).total == [4.0]


def test_from_config_mindspeed_keys():
    cfg = {"verifier_function": ["format", "step"], "verifier_weight": [1.0, 0.5], "verifier_timeout": 2.0,
           "verifier_parallel": 1, "verifier_fallback": 0.0, "verifier_options": {"format": {"prefix": "<think>"}},
           "verifier_wall_timeout": 7.0}
    with build_reward_fn_from_config(cfg) as fn:
        assert fn.sandbox.timeout == 2.0 and fn.sandbox.num_workers == 1 and fn.sandbox.wall_timeout == 7.0
        out = fn(["a</think><answer>b</answer>", "Step 1: a\nStep 2: b\nStep 3: c"], [{}, {}])
    assert out.parts == {"format": [1.0, 0.0], "step": [0.0, 1.0]}
    assert out.total == [1.0, 0.5]


@pytest.mark.parametrize("args,message", [
    ((["countdwn"],), "unknown reward scorer 'countdwn'. Did you mean 'countdown'?"),
    ((["fromat"],), "Did you mean 'format'?"),
    ((["zzzzzz"],), "Valid names: acc, base_acc, countdown"),
    (([],), "verifier_function is empty"),
    ((["format", "acc"], [1.0]), "verifier_weight has 1 entries for 2"),
    ((["format", "format"],), "listed twice"),
    ((["format"], None, {"formt": {"prefix": "x"}}), "not in verifier_function ['format']. Did you mean 'format'?"),
    ((["format"], None, {"format": {"prefx": "x"}}), "has no option 'prefx'. Did you mean 'prefix'?"),
    ((["overlong"],), "needs option(s) max_length, buffer"),
    ((["acc"], None, {"acc": {"prefix": "x"}}), "Its options: none"),
])
def test_config_errors(args, message):
    with pytest.raises(ValueError) as info:
        resolve_scorers(*args)
    assert message in str(info.value)


def test_unknown_config_key_and_unpicklable_scorer():
    with pytest.raises(ValueError, match="unknown reward config key"):
        build_reward_fn_from_config({"verifier_function": ["format"], "verifier_wieght": [1.0]})
    with pytest.raises(TypeError, match="module-level"):
        resolve_scorers([lambda c, l: 0.0])


def test_registry_is_a_plain_dict_of_documented_functions():
    assert isinstance(SCORERS, dict)
    assert {"format", "acc", "base_acc", "gsm8k", "math23k", "countdown", "think_len", "strict_format", "tag_count",
            "reasoning_steps", "repetition_penalty", "overlong"} <= set(SCORERS)
    for name, fn in SCORERS.items():
        assert fn.__doc__, name
        assert get_scorer(name) is fn
    assert get_scorer("step") is SCORERS["reasoning_steps"]
