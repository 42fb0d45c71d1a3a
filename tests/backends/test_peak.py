"""The device matmul peak behind `perf/mfu` (mindrl/backends/peak.py): datasheet lookups by device
name, the CPU measurement's arithmetic, its cache and its override."""
from __future__ import annotations

import pytest
import torch

from mindrl.backends import get_backend
from mindrl.backends import peak as peak_mod
from mindrl.backends.peak import cpu_peak, measure_matmul_peak, table_peak


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA H20", 148e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L40S", 362.05e12),
    ("NVIDIA L40", 181.05e12), ("NVIDIA GeForce RTX 4090", 165.2e12), ("Ascend910B2", 354e12),
    ("Ascend910_9391", 354e12), ("Some Unknown Card", None)])
def test_table_peak_by_device_name(name, expected):
    assert table_peak(name, torch.bfloat16) == expected
    assert table_peak(name, torch.float16) == expected
    assert table_peak(name, torch.float32) is None  # no fp32 datasheet peak: no MFU rather than a wrong one


def test_cuda_backend_looks_its_card_up(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    assert get_backend("cuda").peak_flops(torch.bfloat16) == 989e12


def test_measured_peak_counts_2n3_flops_per_matmul(monkeypatch):
    clock = iter(range(0, 100, 2))  # every timed matmul "takes" 2 s
    monkeypatch.setattr(peak_mod.time, "perf_counter", lambda: float(next(clock)))
    assert measure_matmul_peak(torch.float32, size=64, repeats=2) == 2 * 64 ** 3 / 2.0


def test_cpu_peak_is_measured_once_and_can_be_overridden(monkeypatch):
    monkeypatch.delenv("MINDRL_CPU_PEAK_FLOPS", raising=False)
    calls = []
    monkeypatch.setattr(peak_mod, "measure_matmul_peak", lambda dtype: calls.append(dtype) or 1e11)
    monkeypatch.setattr(peak_mod, "_MEASURED", {})
    assert cpu_peak(torch.float32) == 1e11 and get_backend("cpu").peak_flops(torch.float32) == 1e11
    assert calls == [torch.float32]  # cached per (dtype, threads)
    monkeypatch.setenv("MINDRL_CPU_PEAK_FLOPS", "2.5e11")
    assert cpu_peak(torch.float32) == 2.5e11
    monkeypatch.setenv("MINDRL_CPU_PEAK_FLOPS", "fast")
    with pytest.raises(ValueError, match="MINDRL_CPU_PEAK_FLOPS"):
        cpu_peak(torch.float32)


def test_real_cpu_measurement_is_positive():
    assert 1e8 < measure_matmul_peak(torch.float32, size=256, repeats=1) < 1e14
