"""`torch.compile` of the transformer layers for the training forwards (`actor_config.use_torch_compile`).

What is compiled: each megatron `TransformerLayer`'s call (attention + MLP block with its norms,
RoPE, residual adds and SwiGLU), forward and backward (AOTAutograd), by inductor. Not compiled: the
embedding, the final norm, the fused output layer with its log-probs (mindrl.models.logprobs, a
chunked loop over the vocabulary with its own buffers), megatron's schedules and DDP.

Only the *training* forwards use it (the actor's update and old-log-prob forward, the reference
forward: `PolicyWorker` enters `compiled_layers` around its megatron schedule call). The compiled
callable is installed as the layer's `_compiled_call_impl` (what `nn.Module.compile` sets) for
that call only and removed after, so the built-in rollout engine, which may share the actor's
modules, keeps running them eagerly with its KV cache.

Choices, each for a reason:
- per layer, not the whole GPTModel: megatron's GPTModel forward branches on pipeline stage,
  packed-sequence parameters and the post_process flip of `gpt_forward`; the layers are the
  uniform part, so one graph serves every layer (the layers' parameters are graph inputs) and
  the compile cost does not grow with the depth;
- `dynamic=True`: every step's batch has another length. A dynamic graph from the first call means
  the same kernels run at every step whatever shapes came before, so a run resumed from a
  checkpoint computes what the uninterrupted run computed (automatic dynamic shapes would use a
  static-shape graph for the first length a process sees and a dynamic one after: a resumed run
  would differ in the last bits);
- megatron calls `warnings.warn` inside the layers (RowParallelLinear passes `tp_group=None` and is
  warned on every call); dynamo cannot trace `warnings.warn` and would break the graph there, so
  it is ignored while tracing (`ignore_logging_functions`, scoped to these calls).
Where it is refused (mindrl/config/validate.py): what was not run here (TP / EP > 1, pipeline
parallelism, MoE and MLA models, LoRA, recompute, NPU). Measured in docs/benchmarks.md.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterable, Iterator

import torch

ATTR = "_mindrl_compiled_call"


def _layers(models: Iterable[torch.nn.Module]) -> list[torch.nn.Module]:
    """The transformer layers of these (unwrapped) GPTModels."""
    return [layer for m in models for layer in getattr(getattr(m, "decoder", None), "layers", [])]


def compile_layers(models: Iterable[torch.nn.Module]) -> int:
    """Give each transformer layer of `models` a compiled call (lazily compiled at its first use).
    Returns how many layers got one; idempotent."""
    layers = _layers(models)
    for layer in layers:
        if getattr(layer, ATTR, None) is None:
            setattr(layer, ATTR, torch.compile(layer._call_impl, dynamic=True))
    return len(layers)


@contextlib.contextmanager
def compiled_layers(models: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Within: the layers given a compiled call by `compile_layers` run it (forward and the backward
    of what ran inside); outside, every layer is eager again. A no-op for models never compiled."""
    layers = [layer for layer in _layers(models) if getattr(layer, ATTR, None) is not None]
    if not layers:
        yield
        return
    for layer in layers:
        layer._compiled_call_impl = getattr(layer, ATTR)
    try:
        with torch._dynamo.config.patch(ignore_logging_functions={warnings.warn}):
            yield
    finally:
        for layer in layers:
            layer._compiled_call_impl = None


def is_compiled(models: Iterable[torch.nn.Module]) -> bool:
    return any(getattr(layer, ATTR, None) is not None for layer in _layers(models))


__all__ = ["compile_layers", "compiled_layers", "is_compiled"]
