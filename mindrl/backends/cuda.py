"""The cuda backend: NVIDIA GPUs, NCCL, flash-attn when installed (else torch SDPA).

Not verified on hardware by CI (see docs/hardware.md); its pure logic is unit-tested on CPU.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from mindrl.backends.base import BackendBase


@dataclass
class CudaBackend(BackendBase):
    def __post_init__(self) -> None:
        self.name = "cuda"
        self.device_type = "cuda"
        self.dist_backend = "nccl"
        self.visible_devices_env = "CUDA_VISIBLE_DEVICES"
        self.ray_resource = "GPU"
        self.pin_host_memory = True

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available()

    def setup_process(self, local_rank: int = 0) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'cuda' was chosen but torch.cuda.is_available() is False: "
                               "install a CUDA build of torch (docs/install.md) or set backend: cpu")
        torch.cuda.set_device(local_rank)

    def core_attention_cls(self) -> type:
        from mindrl.backends.attention import FlashAttnCoreAttention, SDPACoreAttention

        return FlashAttnCoreAttention if importlib.util.find_spec("flash_attn") else SDPACoreAttention

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        torch.cuda.manual_seed_all(seed)

    def local_device_count(self) -> int | None:
        return torch.cuda.device_count()

    def peak_flops(self, dtype: torch.dtype) -> float | None:
        """The card's datasheet dense bf16/fp16 peak by name (fp32: None)."""
        from mindrl.backends.peak import table_peak

        return table_peak(torch.cuda.get_device_name(), dtype)
