"""The `Backend` protocol: everything mindrl needs to know about the hardware it runs on.

Nothing outside `mindrl/backends/` asks which hardware it is on; it asks the backend.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Backend(Protocol):
    """What a hardware backend provides. Implementations: cuda, npu, cpu."""

    name: str  # "cuda" | "npu" | "cpu"
    device_type: str  # the torch device type string
    dist_backend: str  # torch.distributed backend: nccl | hccl | gloo
    visible_devices_env: str | None  # CUDA_VISIBLE_DEVICES | ASCEND_RT_VISIBLE_DEVICES | None
    ray_resource: str  # Ray resource name a rank asks for: GPU | NPU | mindrl_cpu (custom)
    attention_impl: str  # flash_attn | npu_fusion_attention | sdpa

    @classmethod
    def is_available(cls) -> bool: ...

    def device(self, local_rank: int = 0) -> torch.device: ...

    def device_count(self) -> int: ...

    def setup_process(self, local_rank: int = 0) -> None:
        """Once per process, before any model is built: bind the device, apply adaptations."""

    def core_attention_cls(self) -> type:
        """megatron-core `core_attention` submodule class for this hardware."""

    def memory_stats(self) -> dict[str, float]: ...

    def empty_cache(self) -> None: ...

    def synchronize(self) -> None: ...

    def get_rng_state(self) -> torch.Tensor: ...

    def set_rng_state(self, state: torch.Tensor) -> None: ...

    def manual_seed(self, seed: int) -> None: ...


@dataclass
class BackendBase:
    """Shared plumbing; subclasses set the class attributes and override what differs."""

    name: str = field(default="", init=False)
    device_type: str = field(default="", init=False)
    dist_backend: str = field(default="", init=False)
    visible_devices_env: str | None = field(default=None, init=False)
    ray_resource: str = field(default="CPU", init=False)
    attention_impl: str = field(default="sdpa", init=False)

    def device(self, local_rank: int = 0) -> torch.device:
        return torch.device(self.device_type, local_rank)

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

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device_type": self.device_type,
            "dist_backend": self.dist_backend,
            "visible_devices_env": self.visible_devices_env,
            "ray_resource": self.ray_resource,
            "attention": self.attention_impl,
            "device_count": self.device_count(),
        }

    # Subclasses override the rest.
    def device_count(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError
