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
    # MoE experts and MLA (DeepSeek-V3 has both): refused as unbuilt, naming the field to change.
    (["actor_config.lora.rank=8", "model=tiny_deepseekv3"], "LoRA on MoE experts and on MLA attention is not built"),
    (["actor_config.lora.rank=8", "model=tiny_deepseekv3"], "set actor_config.lora.rank=0"),
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


def test_adapter_push_needs_vllm_and_a_rank_vllm_takes():
    """actor_config.lora.merge=false (vLLM LoRA adapter pushes): refused with the built-in engine, and for a
    rank above vLLM's largest max_lora_rank; merge=true is the default and works with every engine."""
    assert load_config("grpo_tiny_cpu").actor_config.lora.merge is True
    msg = "actor_config.lora.merge=false (push only the adapters, as a vLLM LoRA) needs generate_config.engine=vllm"
    assert any(msg in e for e in errors("actor_config.lora.rank=8", "actor_config.lora.merge=false"))
    assert errors("actor_config.lora.merge=false") == []  # no LoRA: nothing to push either way
    vllm = ["generate_config.engine=vllm", "generate_config.sampling_config.top_p=1.0",
            "generate_config.sampling_config.top_k=-1"]
    base = errors(*vllm)
    assert errors(*vllm, "actor_config.lora.rank=8", "actor_config.lora.merge=false") == base
    big = errors(*vllm, "actor_config.lora.rank=1024", "actor_config.lora.merge=false")
    assert any("actor_config.lora.rank=1024 with merge=false: vLLM's LoRA support takes ranks up to 512" in e
               for e in big), big


def test_vllm_max_lora_rank():
    """vLLM takes only its listed max_lora_rank values (vllm/config/lora.py MaxLoRARanks): the smallest that
    holds the adapter; validate()'s limit is the largest of them."""
    from mindrl.config.validate import VLLM_MAX_LORA_RANK
    from mindrl.rollout.vllm_support import VLLM_LORA_RANKS, lora_engine_kwargs, vllm_max_lora_rank

    assert [vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 16, 24, 32, 64, 300, 512)] == \
        [1, 8, 8, 16, 16, 32, 32, 64, 320, 512]
    with pytest.raises(ValueError, match="actor_config.lora.rank=513"):
        vllm_max_lora_rank(513)
    assert VLLM_MAX_LORA_RANK == VLLM_LORA_RANKS[-1]
    assert lora_engine_kwargs(24) == {"enable_lora": True, "max_lora_rank": 32, "max_loras": 1, "max_cpu_loras": 1}
    try:  # the installed vLLM's own list, where vLLM is installed
        import typing

        from vllm.config.lora import MaxLoRARanks
    except ImportError:
        return
    assert tuple(typing.get_args(MaxLoRARanks)) == VLLM_LORA_RANKS


def test_publish_peft_adapter_is_atomic_and_peft_readable(tmp_path):
    """The folder vLLM reads each adapter push from appears whole (written beside it, then renamed), reads back
    as the same adapters, and is never overwritten."""
    from mindrl.checkpoint.lora_io import publish_peft_adapter, read_peft_adapter
    from mindrl.models.lora import full_shapes

    hf = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 48, "num_attention_heads": 4,
          "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 10}
    spec = LoRASpec(rank=4, alpha=8, target_modules=["q_proj", "down_proj"])
    g = torch.Generator().manual_seed(0)
    adapters = {}
    for layer in range(2):
        for target in spec.target_modules:
            fan_in, fan_out = full_shapes(hf, target)
            a, b = canonical_names(layer, target)
            adapters[a], adapters[b] = torch.randn(4, fan_in, generator=g), torch.randn(fan_out, 4, generator=g)
    out = publish_peft_adapter(tmp_path / "push1", spec, adapters, hf)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["push1"]  # no temporary folder left behind
    got_spec, got = read_peft_adapter(out, hf)
    assert (got_spec.rank, got_spec.alpha, sorted(got_spec.target_modules)) == (4, 8, ["down_proj", "q_proj"])
    assert got.keys() == adapters.keys()
    assert all(torch.equal(got[k], adapters[k]) for k in adapters)
    with pytest.raises(FileExistsError, match="push1"):
        publish_peft_adapter(out, spec, adapters, hf)
