"""Layer specs: megatron-core's local (no TransformerEngine) GPT spec with two of our modules.

1. `RMSNorm` — computes in fp32 and casts back, exactly like HF's Qwen2/Llama/DeepSeek RMSNorm (so
   bf16 runs stay close to HF), and tags its weight `sequence_parallel` so megatron's
   `finalize_model_grads` all-reduces it across TP when sequence parallelism is on. Megatron's
   `WrappedTorchNorm` refuses sequence parallelism, which TP>1 MoE requires.
2. `DuplicatedLinear` for MLA's KV down-projection. With the local spec, megatron-core 0.16.1 splits
   it column-parallel and gathers the output with `gather_from_tensor_model_parallel_region`,
   whose backward only *splits* the gradient: the shared rope key (`k_pos_emb`) then loses the
   other TP ranks' heads' contributions, so TP>1 gradients are wrong while the loss is right
   (tests/models caught it). TransformerEngine's spec uses a TP-duplicated `TELinear` there; ours
   is the same without TE, registered under the name MLA checks (`TELinear`).
3. The backend's core attention (`Backend.core_attention_cls()`): SDPA on CPU, flash-attn on CUDA,
   `npu_fusion_attention` on Ascend. All take MLA's different K and V head sizes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules


class RMSNorm(torch.nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), computed in fp32 (HF's convention)."""

    def __init__(self, config: Any, hidden_size: int, eps: float = 1e-6, **unused: Any) -> None:
        super().__init__()
        if getattr(config, "normalization", "RMSNorm") != "RMSNorm":
            raise ValueError(f"only RMSNorm is supported, got normalization={config.normalization!r}")
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # Read by finalize_model_grads: grads of SP-replicated params are summed over TP.
        setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


class DuplicatedLinear(torch.nn.Module):
    """y = x W^T with W replicated on every TP rank (megatron's `parallel_mode="duplicated"`).

    Under sequence parallelism each rank sees s/TP tokens, so W's gradient is a partial sum over
    tokens: tagging it `sequence_parallel` makes finalize_model_grads all-reduce it over TP.
    """

    def __init__(self, input_size: int, output_size: int, *, config: Any, init_method: Any,
                 bias: bool = False, skip_bias_add: bool = False, **unused: Any) -> None:
        super().__init__()
        if bias:
            raise ValueError("DuplicatedLinear: bias is not supported")
        if config.tensor_model_parallel_size > 1 and not config.sequence_parallel:
            raise ValueError("multi-latent attention with TP>1 needs sequence_parallel=true")
        self.weight = torch.nn.Parameter(torch.empty(output_size, input_size, dtype=config.params_dtype))
        if config.perform_initialization:
            init_method(self.weight)
        setattr(self.weight, "sequence_parallel", bool(config.sequence_parallel))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.nn.functional.linear(x, self.weight), None


def _register_mla_duplicated_linear() -> None:
    import megatron.core.transformer.multi_latent_attention as mla

    mla.TELinear = DuplicatedLinear
    mla.HAVE_TE = False  # its only other use is TE's fp8 path for linear_proj


_NORM_CLASSES: tuple[type, ...] = (WrappedTorchNorm,)
try:  # Apex's fused norm is what LNImpl resolves to when Apex is installed.
    from megatron.core.fusions.fused_layer_norm import FusedLayerNorm

    _NORM_CLASSES += (FusedLayerNorm,)
except ImportError:  # pragma: no cover
    pass


def _rewrite(node: Any, core_attention: type) -> Any:
    """Walk a spec tree replacing norm classes and the core attention (in place where possible)."""
    if isinstance(node, ModuleSpec):
        if node.submodules is not None:
            node.submodules = _rewrite(node.submodules, core_attention)
        return node
    if isinstance(node, type):
        return RMSNorm if issubclass(node, _NORM_CLASSES) else node
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if f.name == "core_attention" and value is not None:
                setattr(node, f.name, core_attention)
            elif f.name == "linear_kv_down_proj" and value is not None:
                setattr(node, f.name, DuplicatedLinear)
            elif f.name == "layer_specs":
                setattr(node, f.name, [_rewrite(s, core_attention) for s in value])
            else:
                setattr(node, f.name, _rewrite(value, core_attention))
        return node
    return node


def decoder_block_spec(config: Any, core_attention: type, vp_stage: int | None = None) -> TransformerBlockSubmodules:
    """The decoder block for this pipeline stage (dense and MoE layers as `moe_layer_freq` says)."""
    if getattr(config, "multi_latent_attention", False):
        _register_mla_duplicated_linear()
    block = get_gpt_decoder_block_spec(config, use_transformer_engine=False, normalization="RMSNorm",
                                       vp_stage=vp_stage)
    return _rewrite(block, core_attention)
