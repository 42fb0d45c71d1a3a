"""validate() on engine=vllm: what the vLLM adapter cannot run, or cannot run with log-probs equal to the
policy's (mindrl/rollout/base.py), is refused before anything starts (issue 17, review items 2 and 7)."""
from __future__ import annotations

import importlib.util

import pytest

from mindrl.config import load_config, validate

TINY = ["generate_config.engine=vllm"]


def problems(*overrides: str, recipe: str = "grpo_tiny_cpu") -> list[str]:
    """validate()'s engine=vllm messages, on the tiny recipe (head_dim 32, which vLLM-CPU runs)."""
    return [e for e in validate(load_config(recipe, TINY + list(overrides))) if "engine=vllm" in e]


def test_plain_sampling_is_accepted():
    assert problems() == []


@pytest.mark.parametrize("override,shown", [("generate_config.sampling_config.top_p=0.9", "top_p=0.9"),
                                            ("generate_config.sampling_config.top_k=20", "top_k=20"),
                                            ("generate_config.sampling_config.min_p=0.05", "min_p=0.05")])
def test_filters_that_renormalise_vllm_logprobs_are_refused(override, shown):
    found = problems(override)
    assert len(found) == 1 and shown in found[0] and "renormalised" in found[0], found


def test_expert_parallel_must_be_one_or_tp_and_is_refused_on_cpu():
    base = ("model=tiny_deepseekv3", "rl_config.actor_resource.num_npus=4")
    found = problems(*base, "generate_config.infer_tensor_parallel_size=1",
                     "generate_config.infer_expert_parallel_size=2")
    assert any("EP = 1 or EP = TP" in e for e in found), found
    ep_tp = ("generate_config.infer_tensor_parallel_size=2", "generate_config.infer_expert_parallel_size=2")
    assert not any("EP = 1 or EP = TP" in e for e in problems(*base, *ep_tp, "backend=cuda"))
    found = problems(*base, *ep_tp)  # the recipe's backend: cpu
    assert [e for e in found if "cpu_fused_moe.cpp" in e], found  # (and its MLA latent of 24: refused too)


def test_npu_needs_temperature_one():
    found = problems("backend=npu", "generate_config.sampling_config.temperature=0.7")
    assert len(found) == 1 and "vllm-ascend ignores logprobs_mode" in found[0], found
    assert problems("backend=npu", "generate_config.sampling_config.temperature=1.0") == []


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_head_sizes_vllm_cpu_cannot_run_are_refused():
    # the demo's own heads (hidden 128 / 4 heads = 32) run (tests/rollout/test_vllm_grpo.py) ...
    assert not [e for e in validate(load_config("grpo_tiny_cpu", TINY)) if "head_dim" in e]
    # ... the earlier demo's (hidden 64 / 4 heads = 16) are refused
    found = [e for e in validate(load_config("grpo_tiny_cpu", TINY + ["model.scale_down.hidden_size=64"]))
             if "head_dim" in e]
    assert len(found) == 1 and "head_dim (hidden_size / num_attention_heads) is 16" in found[0], found
