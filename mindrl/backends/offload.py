"""Training state to host memory and back, around a rollout engine that needs the device memory
(vLLM / vllm-ascend allocate their weights and KV cache on `wake_up`).

`TrainStateOffload(backend, chunks, optimizer)`:
- `offload()`: the optimizer's state tensors (Adam's moments), the optimizer's own main params
  when they are not the model's parameters (fp32 copies of bf16 / fp16 weights), into host
  memory (pinned where the backend says so); the DDP gradient buffers are freed (their values are
  dead between updates: every update zeroes them first), keeping every view into them valid.
- `reload()`: everything back to the device it came from; the gradient buffers re-allocated, zeroed.
The model's parameters stay: the weight push reads them while the state is on the host.

Bit-exact by construction (copies there and back), whatever the hardware. The host copies are
always real copies, also when the "device" already is the host (CPU backend): there the round
trip saves nothing but still runs every step of it, so tests check order and exactness.

Duck-typed over megatron-core's optimizers (`chained_optimizers`, `.optimizer.state`,
`.optimizer.param_groups`) and DDP (`buffers`, `expert_parallel_buffers`, `grad_data`).
May import: torch only.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch


class TrainStateOffload:
    def __init__(self, backend: Any, chunks: list[torch.nn.Module], optimizer: Any) -> None:
        self.backend, self.chunks, self.optimizer = backend, chunks, optimizer
        self.model_params = {id(p) for c in chunks for p in c.parameters()}
        self.on_host = False
        self.moved: list[tuple[Any, Any, torch.device]] = []  # (container, key, device) of what went to host
        self.freed: list[tuple[torch.Tensor, int]] = []  # (grad buffer, its storage size in elements)
        self.offloaded_bytes = 0

    def _inner(self) -> list[Any]:
        opts = getattr(self.optimizer, "chained_optimizers", None) or [self.optimizer]
        return [getattr(o, "optimizer", o) for o in opts if getattr(o, "optimizer", o) is not None]

    def _slots(self) -> Iterator[tuple[Any, Any, torch.Tensor]]:
        """(container, key, tensor) of every state tensor and every optimizer-owned main param."""
        for opt in self._inner():
            for state in opt.state.values():
                for k, v in state.items():
                    if isinstance(v, torch.Tensor) and v.numel() > 1:  # Adam's scalar `step` stays
                        yield state, k, v
            for group in opt.param_groups:
                for p in group["params"]:
                    if id(p) not in self.model_params:
                        yield p, None, p.data

    def _grad_buffers(self) -> Iterator[torch.Tensor]:
        for chunk in self.chunks:
            for buf in list(getattr(chunk, "buffers", [])) + list(getattr(chunk, "expert_parallel_buffers", [])):
                if getattr(buf, "grad_data", None) is not None:
                    yield buf.grad_data

    @torch.no_grad()
    def offload(self) -> None:
        if self.on_host:
            raise RuntimeError("training state is already offloaded: reload() first")
        self.backend.synchronize()
        self.moved, self.freed, self.offloaded_bytes = [], [], 0
        for container, key, t in list(self._slots()):
            host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=self.backend.pin_host_memory)
            host.copy_(t)
            self._put(container, key, host)
            self.moved.append((container, key, t.device))
            self.offloaded_bytes += t.numel() * t.element_size()
        for grad in self._grad_buffers():
            storage = grad.untyped_storage()
            if storage.size():
                self.freed.append((grad, storage.size()))
                self.offloaded_bytes += storage.size()
                storage.resize_(0)  # views (param.main_grad, bucket.grad_data) stay valid objects
        self.backend.synchronize()
        self.backend.empty_cache()
        self.on_host = True

    @torch.no_grad()
    def reload(self) -> None:
        if not self.on_host:
            raise RuntimeError("training state is not offloaded")
        for grad, size in self.freed:
            grad.untyped_storage().resize_(size)
            grad.zero_()
        for container, key, device in self.moved:
            host = container[key] if key is not None else container.data
            back = torch.empty(host.shape, dtype=host.dtype, device=device)
            back.copy_(host)
            self._put(container, key, back)
        self.backend.synchronize()
        self.moved, self.freed = [], []
        self.on_host = False

    @staticmethod
    def _put(container: Any, key: Any, tensor: torch.Tensor) -> None:
        if key is None:
            container.data = tensor  # a Parameter: the optimizer keys its state by this object
        else:
            container[key] = tensor
