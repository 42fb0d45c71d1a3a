"""Big temporaries reused across the micro-batches of one pass (`reuse_workspace`).

The fused output layer needs a few large fp32 buffers per call (mindrl.models.logprobs' tile scratch, the fused
loss's block of logits: 64-134 MB at a 151,936 vocab). On the CPU, torch hands blocks that big straight to
mmap/munmap, so a fresh one per call is page-faulted and zero-filled by the kernel again: ~30 ms per 134 MB here,
against ~6 ms to write a reused one (docs/benchmarks.md, issue 21), for every micro-batch of every pass.

`reuse_workspace()` opens a pass (mindrl.workers.megatron_engine.forward_backward opens one around megatron's
schedule); inside it `workspace(name, n)` returns the same storage to every call that asks for `name`, grown when
a call needs more, and all of it is freed when the pass ends. Outside a pass it is a plain `torch.empty`. Only
for buffers that die with the call that took them: a caller must be done with `name` before its next call asks
for it again (true of scratch, never of anything returned or kept for a backward). Memory: the buffers stay
allocated between micro-batches of the pass (the planner already counts them: plan.ranks.logprob_chunk_bytes).

May import: torch.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

_POOL: dict[str, torch.Tensor] | None = None


@contextmanager
def reuse_workspace() -> Iterator[None]:
    """One pass: `workspace` buffers are kept and reused until it ends (nested passes share the outer one)."""
    global _POOL
    outer = _POOL
    if outer is None:
        _POOL = {}
    try:
        yield
    finally:
        if outer is None:
            _POOL = None


def workspace(name: str, numel: int, device: torch.device | str) -> torch.Tensor:
    """A 1-D fp32 buffer of `numel` values (uninitialised): inside a pass, the one `name` had before (or a
    bigger one's first `numel`), else a new tensor."""
    if _POOL is None:
        return torch.empty(numel, dtype=torch.float32, device=device)
    buf = _POOL.get(name)
    if buf is None or buf.numel() < numel or buf.device != torch.device(device):
        _POOL.pop(name, None)  # the old one freed before the bigger one is allocated
        buf = _POOL[name] = torch.empty(numel, dtype=torch.float32, device=device)
    return buf[:numel]


def release(name: str) -> None:
    """Free `name`'s buffer now (before a pass ends), e.g. ahead of a path that needs the memory."""
    if _POOL is not None:
        _POOL.pop(name, None)


__all__ = ["release", "reuse_workspace", "workspace"]
