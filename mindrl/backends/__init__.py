"""Hardware backends: the only place that knows whether we run on CUDA, Ascend NPU or CPU.

Owns: device type and `torch.device`, collective backend (nccl / hccl / gloo), process-group
setup (`distributed`), visible-devices variable and Ray resource name, attention kernel, the
hardware's answers to "which params dtype for `auto`" and "initialise on the host?", seeding, the
device's matmul peak FLOP/s (`peak`, for MFU), linears on prepacked weights (`packed_linear`,
the rollout's `generate_config.packed_linear`), and
the adaptations that let megatron-core run on the CPU (`cpu_megatron`).
May import: torch, megatron-core. Nothing else in mindrl.

    backend = get_backend("auto")   # or "cuda" / "npu" / "cpu", from config `backend:`
    backend.setup_process(local_rank)
"""
from __future__ import annotations

import os

from mindrl.backends.base import Backend, BackendBase
from mindrl.backends.cpu import CpuBackend
from mindrl.backends.cuda import CudaBackend
from mindrl.backends.npu import NpuBackend

BACKENDS: dict[str, type[BackendBase]] = {"cuda": CudaBackend, "npu": NpuBackend, "cpu": CpuBackend}

# Detection order for `auto`: a machine with torch_npu is an Ascend box; else CUDA; else CPU.
_DETECTION_ORDER = ("npu", "cuda", "cpu")


def detect_backend() -> str:
    """Name of the best available backend. `MINDRL_BACKEND` in the environment overrides."""
    forced = os.environ.get("MINDRL_BACKEND")
    if forced and forced != "auto":
        return forced
    for name in _DETECTION_ORDER:
        if BACKENDS[name].is_available():
            return name
    return "cpu"


def get_backend(name: str = "auto") -> BackendBase:
    """The backend called `name` (`auto`: detect). Unknown names fail with the valid choices."""
    if name == "auto":
        name = detect_backend()
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown value {name!r}; expected one of auto, {', '.join(BACKENDS)}")
    return BACKENDS[name]()


__all__ = ["Backend", "BackendBase", "BACKENDS", "CpuBackend", "CudaBackend", "NpuBackend",
           "detect_backend", "get_backend"]
