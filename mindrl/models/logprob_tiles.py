"""The fused output layer's per-tile elementwise work as compiled kernels (`actor_config.compiled_logprob_tiles`).

mindrl.models.logprobs computes each `[tokens, cols]` tile of logits with a matmul and then, in eager torch,
walks the tile five or six times: the forward's max, subtract, exp, sum, multiply and sum (the online
log-sum-exp and the entropy's sum p·z), the backward's subtract, exp, multiply-add and multiply (the gradient
p·(a log p + b)). Each walk is a separate aten kernel that reads, and mostly writes, the whole tile; on the
2-core CPU that was about 40% on top of the tile's matmul in the forward (docs/benchmarks.md, issue 21).

Here the same arithmetic is one `torch.compile` (inductor) function per pass:
- `tile_statistics(z)` -> (row max m, S = sum exp(z - m), T = sum exp(z - m)(z - m)): one loop for the max
  and one for both sums, nothing written back;
- `tile_gradient_(z, lse, a, b)`: z <- exp(z - lse) * (a (z - lse) + b) in place, one read and one write.
Both are compiled with `dynamic=True` (the tokens of a micro-batch and the last tile's width change every
call; a dynamic graph from the first call means the same kernels at every step, so a resumed run computes
what the uninterrupted one did, as in mindrl/models/compile.py). The results differ from the eager path's
by summation order only (fp32 ~1e-7 relative); for a given shape and thread count they are deterministic.
Compiled lazily at the first call of a process (a few seconds; inductor caches the code on disk).

`eager_statistics` / `eager_gradient_` are the plain-torch functions that get compiled (callable uncompiled,
e.g. to debug); the eager path of mindrl.models.logprobs does not use them (it makes its own in-place passes
into reused buffers). The tests compare the compiled path with float64 autograd (tests/models/test_fused_head.py).
May import: torch.
"""
from __future__ import annotations

import shutil
from typing import Callable

import torch

CXX_COMPILERS = ("g++", "c++", "clang++")


def has_cxx_compiler() -> bool:
    """A C++ compiler on PATH: what inductor needs to build the CPU kernels."""
    return any(shutil.which(c) for c in CXX_COMPILERS)


def eager_statistics(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(m, S, T) per row of the fp32 tile `z` [rows, cols] (not modified): m = max, S = sum exp(z - m),
    T = sum exp(z - m)(z - m)."""
    m = z.amax(dim=-1)
    d = z - m[:, None]
    e = d.exp()
    return m, e.sum(-1), (e * d).sum(-1)


def eager_gradient_(z: torch.Tensor, lse: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """z <- exp(z - lse) * (a (z - lse) + b), per-row lse, a, b [rows]; in place, returns z."""
    logq = z - lse[:, None]
    return z.copy_(logq.exp() * (a[:, None] * logq + b[:, None]))


_COMPILED: dict[str, Callable] = {}


def _compiled(name: str, fn: Callable) -> Callable:
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=True)
    return _COMPILED[name]


def tile_statistics(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`eager_statistics`, compiled."""
    return _compiled("statistics", eager_statistics)(z)


def tile_gradient_(z: torch.Tensor, lse: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`eager_gradient_`, compiled (writes into z)."""
    _compiled("gradient", eager_gradient_)(z, lse, a, b)
    return z


__all__ = ["eager_gradient_", "eager_statistics", "has_cxx_compiler", "tile_gradient_", "tile_statistics"]
