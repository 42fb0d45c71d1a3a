"""`actor_config.lora` in validate() and the pure LoRA helpers (no process group)."""
from __future__ import annotations

import pytest
import torch

from mindrl.config import load_config, validate
from mindrl.models.lora import LoRASpec, canonical_delta, canonical_names, hf_delta, init_lora_A


def errors(*overrides: str) -> list[str]:
    return validate(load_config("grpo_tiny_cpu", list(overrides)), check_paths=False)


def test_lora_config_is_valid_and_off_by_default():
    assert load_config("grpo_tiny_cpu").actor_config.lora.rank == 0
    assert errors("actor_config.lora.rank=16") == []


@pytest.mark.parametrize("overrides,message", [
    (["actor_config.lora.rank=8", "actor_config.lora.target_modules=[q_proj,qkv_proj]"],
     "actor_config.lora.target_modules: unknown module(s) ['qkv_proj']"),
    (["actor_config.lora.rank=8", "actor_config.lora.quantize_base=nf4"],
     "actor_config.lora.quantize_base='nf4': a 4-bit (QLoRA) base is not supported"),
    (["actor_config.lora.rank=8", "actor_config.lora.dropout=1.5"], "actor_config.lora.dropout: 1.5 not in [0, 1)"),
    (["actor_config.lora.rank=-1"], "actor_config.lora.rank: -1 < 0"),
    (["actor_config.lora.rank=8", "model=tiny_deepseekv3"], "actor_config.lora: model_type 'deepseek_v3' is not supported"),
])
def test_bad_lora_config_is_refused(overrides, message):
    assert any(message in e for e in errors(*overrides)), errors(*overrides)


def test_scaling_and_layout_free_init():
    assert LoRASpec(rank=16, alpha=32).scaling == 2.0
    assert LoRASpec(rank=16, alpha=32, use_rslora=True).scaling == 8.0
    a = init_lora_A(7, "x", 4, 64)
    assert torch.equal(a, init_lora_A(7, "x", 4, 64)) and not torch.equal(a, init_lora_A(7, "y", 4, 64))
    assert a.abs().max() <= 1 / 8 and a.std() > 0.05  # peft's U(-1/sqrt(in), 1/sqrt(in))


def test_canonical_delta_interleaves_qkv_per_kv_group():
    """The fused QKV delta equals HF's separate q/k/v deltas placed as megatron interleaves them
    (the same transform as checkpoint.hf_mapping's "qkv" rule), k left at zero when not adapted."""
    from mindrl.checkpoint.hf_mapping import Mapping

    hf = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
          "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 10}
    g = torch.Generator().manual_seed(0)
    adapters = {}
    for target, out in (("q_proj", 32), ("v_proj", 16)):
        a, b = canonical_names(0, target)
        adapters[a], adapters[b] = torch.randn(2, 32, generator=g), torch.randn(out, 2, generator=g)
    got = canonical_delta(adapters, 0, "self_attention.linear_qkv", hf, 0.5)
    m = Mapping(hf)
    rule = m.by_canonical["decoder.layers.0.self_attention.linear_qkv.weight"]
    q = hf_delta(adapters, "model.layers.0.self_attn.q_proj.weight", 0.5)
    v = hf_delta(adapters, "model.layers.0.self_attn.v_proj.weight", 0.5)
    want = m.to_canonical(rule, [q, torch.zeros(16, 32), v])
    assert torch.equal(got, want)
