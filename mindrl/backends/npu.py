"""The npu backend: Huawei Ascend through torch_npu, HCCL, `npu_fusion_attention`.

`torch_npu` is imported lazily: installing it changes what `import torch` does (it autoloads as a
torch backend and fails without CANN), so it must never be a hard import. Not verified on
hardware (see docs/hardware.md).
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

import torch

from mindrl.backends.base import BackendBase

INSTALL_HINT = ("the npu backend needs the 'torch_npu' package (and CANN): "
                "pip install -e '.[npu]' on an Ascend machine, see docs/install.md#ascend-npu")


def import_torch_npu() -> ModuleType:
    """Import torch_npu or fail with a message naming the package and the install doc."""
    try:
        return importlib.import_module("torch_npu")
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} (import failed: {err})") from err


@dataclass
class NpuBackend(BackendBase):
    def __post_init__(self) -> None:
        self.name = "npu"
        self.device_type = "npu"
        self.dist_backend = "hccl"
        self.visible_devices_env = "ASCEND_RT_VISIBLE_DEVICES"
        self.ray_resource = "NPU"
        self.pin_host_memory = True

    @classmethod
    def is_available(cls) -> bool:
        if importlib.util.find_spec("torch_npu") is None:
            return False
        try:
            import_torch_npu()
            return bool(torch.npu.is_available())  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a broken CANN install means "not available"
            return False

    def _npu(self) -> ModuleType:
        import_torch_npu()
        return torch.npu  # type: ignore[attr-defined]

    def synchronize(self) -> None:
        self._npu().synchronize()

    def empty_cache(self) -> None:
        self._npu().empty_cache()

    def setup_process(self, local_rank: int = 0) -> None:
        import_torch_npu()
        # Redirects megatron's torch.cuda calls to the NPU (torch_npu's own adaptation layer).
        importlib.import_module("torch_npu.contrib.transfer_to_npu")
        self._npu().set_device(local_rank)

    def core_attention_cls(self) -> type:
        from mindrl.backends.attention import NpuFusionCoreAttention

        return NpuFusionCoreAttention

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        self._npu().manual_seed_all(seed)

    def local_device_count(self) -> int | None:
        return int(self._npu().device_count())

    def peak_flops(self, dtype: torch.dtype) -> float | None:
        """The die's datasheet dense bf16/fp16 peak by name (fp32: None)."""
        from mindrl.backends.peak import table_peak

        return table_peak(str(self._npu().get_device_name()), dtype)
