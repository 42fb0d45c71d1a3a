"""Matmul peak FLOP/s of this rank's device: the denominator of model-FLOPs utilisation (`perf/mfu`).

- cuda / npu: the vendor's dense bf16 / fp16 tensor peak, looked up by device name (`DEVICE_PEAKS`,
  the numbers of verl's `get_device_flops` table, verl/utils/flops_counter.py, which quotes NVIDIA's
  and Huawei's datasheets); unknown cards and fp32 give None (no MFU is logged rather than a wrong one).
- cpu: measured, once per process, dtype and thread count: the best of a few 2048 x 2048 `torch.mm`
  at the current intra-op threads (`MINDRL_CPU_PEAK_FLOPS` in the environment overrides it). A CPU
  "device" is one rank, so two ranks sharing the cores each measure their share. Measured under
  load, the peak is low too, so MFU stays meaningful as a ratio; absolute numbers are not.
Not verified on GPU / NPU hardware (the table lookups are unit-tested on names).
"""
from __future__ import annotations

import os
import time

import torch

# Dense (no sparsity) bf16 = fp16 tensor-core peak, FLOP/s. Matched longest name first, case-insensitively,
# as a substring of torch's device name ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "Ascend910B2").
DEVICE_PEAKS: dict[str, float] = {
    "GB200": 2.5e15, "B200": 2.25e15, "MI300X": 1336e12,
    "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H800": 989e12, "H200": 989e12, "H20": 148e12,
    "A100": 312e12, "A800": 312e12, "L40S": 362.05e12, "L40": 181.05e12, "L20": 119.5e12, "A40": 149.7e12,
    "A10G": 125e12, "A10": 125e12, "L4": 121e12, "V100": 125e12, "T4": 65e12,
    "RTX 4090": 165.2e12, "RTX 3090": 71e12,
    "910B": 354e12, "910_93": 354e12, "Ascend910": 354e12,
}
HALF = (torch.bfloat16, torch.float16)
_MEASURED: dict[tuple[str, torch.dtype, int], float] = {}


def table_peak(device_name: str, dtype: torch.dtype) -> float | None:
    """The datasheet bf16/fp16 peak of the card called `device_name`; None for fp32 or an unknown card."""
    if dtype not in HALF:
        return None
    name = device_name.lower()
    for key in sorted(DEVICE_PEAKS, key=len, reverse=True):
        if key.lower() in name:
            return DEVICE_PEAKS[key]
    return None


def measure_matmul_peak(dtype: torch.dtype = torch.float32, *, size: int = 2048, repeats: int = 3,
                        device: str | torch.device = "cpu") -> float:
    """FLOP/s of the fastest of `repeats` [size, size] @ [size, size] matmuls (after one warm-up), at the
    current intra-op thread count."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def cpu_peak(dtype: torch.dtype = torch.float32) -> float:
    """This process's measured CPU matmul peak (cached per dtype and thread count), or the override."""
    override = os.environ.get("MINDRL_CPU_PEAK_FLOPS")
    if override:
        try:
            return float(override)
        except ValueError:
            raise ValueError(f"MINDRL_CPU_PEAK_FLOPS={override!r}: expected a number of FLOP/s, e.g. 2.27e11") from None
    key = ("cpu", dtype, torch.get_num_threads())
    if key not in _MEASURED:
        _MEASURED[key] = measure_matmul_peak(dtype)
    return _MEASURED[key]
