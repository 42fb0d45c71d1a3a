"""Linear layers on weights packed once into the hardware's preferred layout (CPU: oneDNN).

A `LinearPacker` takes a weight [out, in] and the number of rows the calls will mostly have, and
returns `linear(x, bias) = x @ weight.T + bias` computed on a packed copy of the weight. The copy is a
snapshot: a caller whose weights change (every optimizer step) packs again.

Why on CPU: `F.linear` at decode shapes (a few dozen rows against a large weight, e.g. the LM head's
151,936 x 256) goes to an sgemm that re-lays the whole weight out on every call; oneDNN's
inner-product primitive on a weight already reordered into its blocked layout skips that, which is
how vLLM-CPU runs its linears (`vllm/model_executor/layers/utils.py`, `create_onednn_mm`). Torch
ships the same two operators for its inductor freezing pass (`torch/_inductor/fx_passes/
mkldnn_fusion.py`): `mkldnn._reorder_linear_weight(weight, batch_size)` and
`mkldnn._linear_pointwise(x, packed, bias, "none", [], "")`. Results differ from `F.linear` only in
summation order (fp32: ~1e-7 relative); they are deterministic for a given shape and thread count,
and a row's result does not depend on the other rows of the call.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

LinearFn = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
LinearPacker = Callable[[torch.Tensor, int], LinearFn]


def _onednn_ops() -> bool:
    try:
        return (torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._reorder_linear_weight is not None  # raises when the op is absent
                and torch.ops.mkldnn._linear_pointwise is not None)
    except (AttributeError, RuntimeError):
        return False


def onednn_supports(dtype: torch.dtype) -> bool:
    """oneDNN's packed linear runs `dtype` on this CPU (bf16 / fp16 need the ISA: avx512_bf16, AMX ...)."""
    if not _onednn_ops():
        return False
    if dtype == torch.float32:
        return True
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return False


def onednn_pack(weight: torch.Tensor, rows: int) -> LinearFn:
    """Pack `weight` [out, in] (CPU, contiguous or not) into oneDNN's layout for calls of about `rows` rows;
    the returned `linear(x, bias)` takes x [..., in] in the weight's dtype and returns [..., out]."""
    if weight.dim() != 2 or weight.device.type != "cpu":
        raise ValueError(f"onednn_pack: needs a 2-D CPU weight, got {tuple(weight.shape)} on {weight.device}")
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), max(1, int(rows)))
    op = torch.ops.mkldnn._linear_pointwise

    def linear(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return op(x, packed, bias, "none", [], "")
    linear.packed = packed  # type: ignore[attr-defined]  # for memory accounting / tests
    return linear


__all__ = ["LinearFn", "LinearPacker", "onednn_pack", "onednn_supports"]
