"""The cpu backend: real megatron-core code paths on the CPU with gloo. Used by every test here."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from mindrl.backends.base import BackendBase
from mindrl.backends.packed_linear import LinearPacker


@dataclass
class CpuBackend(BackendBase):
    def __post_init__(self) -> None:
        self.name = "cpu"
        self.device_type = "cpu"
        self.dist_backend = "gloo"
        self.visible_devices_env = None
        # A custom resource, not Ray's CPU count: a CPU "device" is one rank, and ranks must not
        # compete with Ray's own CPU accounting (actors ask num_cpus=0 plus one of these).
        self.ray_resource = "mindrl_cpu"
        # No device to initialise on: parameters are created where they live.
        self.use_cpu_initialization = True

    @classmethod
    def is_available(cls) -> bool:
        return True

    def device(self, local_rank: int = 0) -> torch.device:
        return torch.device("cpu")

    def setup_process(self, local_rank: int = 0) -> None:
        from mindrl.backends import cpu_megatron

        # Each rank of a multi-process run shares 2 cores here: more threads only thrash.
        threads = int(os.environ.get("MINDRL_CPU_THREADS", "0")) or max(1, (os.cpu_count() or 1) // max(
            1, int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))))
        torch.set_num_threads(threads)
        cpu_megatron.apply()

    def core_attention_cls(self) -> type:
        from mindrl.backends.attention import SDPACoreAttention

        return SDPACoreAttention

    def model_dtype(self, requested: str, checkpoint_dtype: str | None = None) -> str:
        """"auto" is fp32 here whatever the checkpoint: CPUs have no fast bf16 matmuls, and fp32 is the
        numerical reference every test compares against."""
        return "fp32" if requested == "auto" else requested

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def peak_flops(self, dtype: torch.dtype) -> float | None:
        """Measured once per process (2048^2 `torch.mm` at this rank's threads), or MINDRL_CPU_PEAK_FLOPS."""
        from mindrl.backends.peak import cpu_peak

        return cpu_peak(dtype)

    def linear_packer(self, dtype: torch.dtype) -> LinearPacker | None:
        """oneDNN's packed inner product (`packed_linear.onednn_pack`) where torch has oneDNN and this CPU runs
        `dtype` in it (bf16 needs avx512_bf16 / AMX); None otherwise."""
        from mindrl.backends.packed_linear import onednn_pack, onednn_supports

        return onednn_pack if onednn_supports(dtype) else None

    def logits_matmul(self, dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """oneDNN's inner product on the unpacked weight (`packed_linear.onednn_matmul`) where torch has oneDNN
        and this CPU runs `dtype` in it."""
        from mindrl.backends.packed_linear import onednn_matmul, onednn_supports

        return onednn_matmul if onednn_supports(dtype) else None

    def sparse_embedding_grad(self) -> bool:
        """True: a dense [vocab, hidden] gradient per micro-batch is a fresh, page-faulted buffer here, and the
        sparse one's add into main_grad is deterministic on the CPU (mindrl.models.sparse_embedding)."""
        return True

    def local_device_count(self) -> int | None:
        return None  # ranks are processes, not devices
