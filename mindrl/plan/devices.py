"""Device memory: the named devices `--device` accepts, and the local device's memory when there is one.

Capacities are what a process can allocate, not the marketing size: `torch.cuda.get_device_properties
().total_memory` of an 80 GB H100 / A100 is 79.1 GiB, of an H200 139.8 GiB (what the card reports,
less the driver's reservation), of an RTX 4090 23.6 GiB; Ascend 910B / A3 dies have 64 GB of HBM of
which about 61 GiB is usable (the figure NPU out-of-memory messages report). Not measured here (no such
device on this machine): taken from the vendors' reported totals, see docs/plan.md.

May import: torch.
"""
from __future__ import annotations

GiB = 1024 ** 3

DEVICES: dict[str, float] = {  # name -> usable GiB
    "h100-80g": 79.1,
    "h200-141g": 139.8,
    "a100-80g": 79.1,
    "rtx4090-24g": 23.6,
    "910b-64g": 61.0,
    "a3-64g": 61.0,
}


def device_bytes(name: str | None = None, gb: float | None = None) -> int | None:
    """Capacity in bytes from a device name or a size in GiB (None when neither is given)."""
    if name is not None and gb is not None:
        raise ValueError("give --device or --device-gb, not both")
    if gb is not None:
        if gb <= 0:
            raise ValueError(f"--device-gb={gb} must be > 0")
        return int(gb * GiB)
    if name is None:
        return None
    if name not in DEVICES:
        raise ValueError(f"--device: unknown device '{name}'; expected one of {', '.join(DEVICES)} (or --device-gb N)")
    return int(DEVICES[name] * GiB)


def local_device_bytes(backend: str) -> int | None:
    """The memory of this machine's first accelerator of the job's backend (None on the CPU backend or
    when none is visible): what validate()'s memory check compares against before any rank starts."""
    import torch

    if backend in ("cuda", "auto") and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).total_memory)
    if backend in ("npu", "auto"):
        npu = getattr(torch, "npu", None)
        if npu is not None and npu.is_available():  # torch_npu registers torch.npu
            return int(npu.get_device_properties(0).total_memory)
    return None
