"""Linear layers on weights packed once into the hardware's preferred layout (CPU: oneDNN).

A `LinearPacker` takes a weight [out, in] and the number of rows the calls will mostly have, and
returns `linear(x, bias) = x @ weight.T + bias` computed on a packed copy of the weight (or, with
`with_out=True`, `linear(x, bias, out)` writing into a buffer the caller reuses). The copy is a
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
# pack(weight, rows, with_out=False) -> linear(x, bias) (with_out: linear(x, bias, out), writing into `out`)
LinearPacker = Callable[..., Callable[..., torch.Tensor]]


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


# `with_out` packs: output columns per piece, so each piece's result (rows x OUT_CHUNK) stays small enough for
# malloc to serve from its heap (no mmap, no page faults) before it is copied into the caller's buffer.
OUT_CHUNK = 8192


def onednn_pack(weight: torch.Tensor, rows: int, with_out: bool = False) -> Callable[..., torch.Tensor]:
    """Pack `weight` [out, in] (CPU, contiguous or not) into oneDNN's layout for calls of about `rows` rows;
    the returned `linear(x, bias)` takes x [..., in] in the weight's dtype and returns [..., out].

    `with_out`: `linear(x, bias, out)` writes into `out` [..., out_features] (contiguous), which the caller
    reuses across calls. For a large output (the LM head's rows x 151,936: 39 MB at 64 rows) a fresh tensor
    is mmap'ed and page-faulted on every call (~17 ms of CPU here, a fifth of the matmul); here the weight
    is packed in pieces of OUT_CHUNK output columns whose small results are copied into `out`. Each output
    element is the same dot product as unpieced (pieces split the output columns, never the sum)."""
    if weight.dim() != 2 or weight.device.type != "cpu":
        raise ValueError(f"onednn_pack: needs a 2-D CPU weight, got {tuple(weight.shape)} on {weight.device}")
    rows = max(1, int(rows))
    op = torch.ops.mkldnn._linear_pointwise
    w = weight.detach()
    if not with_out:
        packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), rows)

        def linear(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
            return op(x, packed, bias, "none", [], "")
        return linear
    bounds = [(a, min(a + OUT_CHUNK, w.shape[0])) for a in range(0, w.shape[0], OUT_CHUNK)]
    pieces = [torch.ops.mkldnn._reorder_linear_weight(w[a:b].contiguous(), rows) for a, b in bounds]

    def linear_out(x: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
        x2, o2 = x.reshape(-1, x.shape[-1]), out.view(-1, out.shape[-1])
        for (a, b), piece in zip(bounds, pieces):
            o2[:, a:b].copy_(op(x2, piece, None if bias is None else bias[a:b], "none", [], ""))
        return out
    return linear_out


def onednn_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [rows, in] @ weight[out, in].T as a new [rows, out] tensor by oneDNN's inner product on the weight as it
    is (not packed: the output layer's weight changes every optimizer step and a packed copy would double its
    memory). Why: torch.mm's sgemm with a transposed weight ran the fused output layer's logits tiles
    ([220, 256] x [4,096, 256].T) at ~62-66% of this machine's 2048^2 peak, this at ~98-110%
    (docs/benchmarks.md, issue 21). Same numbers as torch.mm within summation order (fp32 ~1e-7 relative),
    deterministic for a shape and thread count, a row's result independent of the other rows."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


__all__ = ["LinearFn", "LinearPacker", "onednn_matmul", "onednn_pack", "onednn_supports"]
