"""The `Backend` protocol: everything mindrl needs to know about the hardware it runs on.

Nothing outside `mindrl/backends/` asks which hardware it is on; it asks the backend.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import torch

from mindrl.backends.packed_linear import LinearPacker


@runtime_checkable
class Backend(Protocol):
    """What a hardware backend provides. Implementations: cuda, npu, cpu."""

    name: str  # "cuda" | "npu" | "cpu"
    device_type: str  # the torch device type string
    dist_backend: str  # torch.distributed backend: nccl | hccl | gloo
    # For the Ray launch path (mindrl/launch): which device variable a rank sees and which Ray
    # resource a rank asks for.
    visible_devices_env: str | None  # CUDA_VISIBLE_DEVICES | ASCEND_RT_VISIBLE_DEVICES | None
    ray_resource: str  # Ray resource name a rank asks for: GPU | NPU | mindrl_cpu (custom)
    # megatron's `use_cpu_initialization`: initialise parameters on the host (then move them).
    use_cpu_initialization: bool

    @classmethod
    def is_available(cls) -> bool: ...

    def device(self, local_rank: int = 0) -> torch.device: ...

    def setup_process(self, local_rank: int = 0) -> None:
        """Once per process, before any model is built: bind the device, apply adaptations."""

    def core_attention_cls(self) -> type:
        """megatron-core `core_attention` submodule class for this hardware."""

    def model_dtype(self, requested: str, checkpoint_dtype: str | None = None) -> str:
        """The params dtype to build a model in ("fp32" | "bf16" | "fp16"); `requested` "auto" decides here."""

    def manual_seed(self, seed: int) -> None: ...

    # Memory calls (training-state offload, mindrl/backends/offload.py).
    pin_host_memory: bool  # page-lock host copies of device tensors (faster transfers)

    def synchronize(self) -> None:
        """Wait for the device's queued work (before reusing or freeing memory it may still touch)."""

    def empty_cache(self) -> None:
        """Return the allocator's cached, unused device memory (so another engine can take it)."""

    def local_device_count(self) -> int | None:
        """How many ranks this machine can host, one per device; None when ranks are not tied to devices
        (CPU: a rank is a process, so any number per node works, within what the launcher allows)."""

    def peak_flops(self, dtype: torch.dtype) -> float | None:
        """This rank's device's matmul peak FLOP/s in `dtype` (`mindrl.backends.peak`), None when unknown."""

    def linear_packer(self, dtype: torch.dtype) -> LinearPacker | None:
        """`pack(weight, rows) -> linear(x, bias)`: linears on weights packed once into this hardware's
        preferred layout (`mindrl.backends.packed_linear`); None where the hardware has none for `dtype`."""

    def logits_matmul(self, dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """`matmul(x, w) -> x @ w.T` (new tensor) for the fused output layer's logits tiles ([a few hundred
        tokens, hidden] x [thousands of vocab rows, hidden].T, mindrl.models.logprobs), where this hardware has
        a faster kernel for it than torch.mm in `dtype`; None: torch.mm."""

    def sparse_embedding_grad(self) -> bool:
        """Whether training models' word embeddings take a sparse weight gradient (the looked-up rows only,
        mindrl.models.sparse_embedding) where it is deterministic and cheaper than megatron's dense one."""


@dataclass
class BackendBase:
    """Shared plumbing; subclasses set the class attributes and override what differs."""

    name: str = field(default="", init=False)
    device_type: str = field(default="", init=False)
    dist_backend: str = field(default="", init=False)
    visible_devices_env: str | None = field(default=None, init=False)
    ray_resource: str = field(default="CPU", init=False)
    use_cpu_initialization: bool = field(default=False, init=False)
    pin_host_memory: bool = field(default=False, init=False)

    def synchronize(self) -> None:
        """No queued device work (the host itself): nothing to wait for."""

    def empty_cache(self) -> None:
        """No device allocator cache: nothing to return."""

    def peak_flops(self, dtype: torch.dtype) -> float | None:
        """Unknown unless the backend knows its device (see mindrl/backends/peak.py)."""
        return None

    def linear_packer(self, dtype: torch.dtype) -> LinearPacker | None:
        """None: no packed-weight linear on this hardware (its plain matmuls are the fast path)."""
        return None

    def logits_matmul(self, dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """None: torch.mm is this hardware's fast path for the output layer's logits tiles."""
        return None

    def sparse_embedding_grad(self) -> bool:
        """False: megatron's dense word-embedding gradient (sparse adds are atomics, not deterministic, on GPUs)."""
        return False

    def device(self, local_rank: int = 0) -> torch.device:
        return torch.device(self.device_type, local_rank)

    def model_dtype(self, requested: str, checkpoint_dtype: str | None = None) -> str:
        """`requested` unless it is "auto"; on an accelerator "auto" keeps a half-precision checkpoint
        (HF `torch_dtype` bfloat16/float16) in bf16 and anything else in fp32."""
        if requested != "auto":
            return requested
        return "bf16" if checkpoint_dtype in ("bfloat16", "float16") else "fp32"

    # The two below serve the Ray launch path (issue 9), like `visible_devices_env`.
    def visible_devices(self) -> list[str] | None:
        """The devices this process may see, from the visible-devices variable (None: all)."""
        if not self.visible_devices_env:
            return None
        value = os.environ.get(self.visible_devices_env)
        if value is None or value.strip() == "":
            return None
        return [v.strip() for v in value.split(",") if v.strip()]

    def set_visible_devices(self, ids: list[int | str], env: dict[str, str] | None = None) -> dict[str, str]:
        """Return (and optionally update) an environment restricting a child to `ids`."""
        env = os.environ.copy() if env is None else env
        if self.visible_devices_env:
            env[self.visible_devices_env] = ",".join(str(i) for i in ids)
        return env
