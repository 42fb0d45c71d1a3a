"""Weights, gradients, fp32 main parameters and optimizer states of one rank, counted on the real
megatron-core objects that rank builds (inside `world.simulated_rank`, so nothing is allocated).

Counted as storages, each once: megatron's DDP keeps parameters (distributed optimizer) and gradients
in padded contiguous buffers, and the bytes a device holds are those buffers, padding included, not
the sum of the views into them. The optimizer's Adam moments are created by megatron's own
`init_state_fn` (what it runs before loading a checkpoint), the same tensors torch's Adam creates at
its first step (torch's 0-dim `step` counters, 4 bytes per parameter tensor and kept on the host by
the non-fused Adam, are not counted).

May import: torch, megatron-core, mindrl.models, mindrl.workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

from mindrl.workers.megatron_engine import MegatronModel


def storage_bytes(tensors: Iterable[torch.Tensor], exclude: set[int] | None = None) -> tuple[int, set[int]]:
    """(bytes of the distinct storages behind `tensors`, their ids), skipping storages in `exclude`."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        st = t.untyped_storage()
        key = st._cdata
        if key in seen or (exclude and key in exclude):
            continue
        seen.add(key)
        total += st.nbytes()
    return total, seen


@dataclass
class TrainStates:
    """Bytes of one training rank's persistent state."""

    num_params: int  # parameters on this rank (elements, each tensor once)
    weights: int  # the storages of the parameters, in the training dtype (the DDP param buffer when it has one)
    grads: int  # DDP gradient buffers (fp32: grad_reduce_in_fp32), padding included
    main_params: int  # the optimizer's fp32 copies (bf16/fp16 training; the DP shard with the distributed optimizer)
    optimizer: int  # Adam's exp_avg and exp_avg_sq (fp32, of the main params)

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.main_params + self.optimizer


def inner_optimizers(optimizer: Any) -> list[Any]:
    """megatron's (possibly chained) optimizer -> its wrapped megatron optimizers."""
    return list(getattr(optimizer, "chained_optimizers", None) or [optimizer])


def count_train_states(model: MegatronModel, *, init_optimizer_state: bool = True) -> TrainStates:
    """Count `model`'s state (see the module docstring). `init_optimizer_state`: create Adam's moments
    with megatron's `init_state_fn` first (a freshly built optimizer has none yet)."""
    params = {id(p): p for c in model.chunks for p in c.parameters()}
    num_params = sum(p.numel() for p in params.values())
    weights, param_storages = storage_bytes(params.values())
    buffers = [b for c in model.chunks for b in (getattr(c, "buffers", []) + getattr(c, "expert_parallel_buffers", []))]
    grads = storage_bytes(b.grad_data for b in buffers)[0]
    main, opt_state = [], []
    for wrapped in inner_optimizers(model.optimizer):
        inner = getattr(wrapped, "optimizer", None)
        if inner is None:
            continue
        if init_optimizer_state and getattr(wrapped, "init_state_fn", None) is not None:
            wrapped.init_state_fn(inner, getattr(wrapped, "config", None))
        for group in inner.param_groups:
            main.extend(group["params"])
        for state in inner.state.values():
            opt_state.extend(v for k, v in state.items() if torch.is_tensor(v) and k != "step")
    main_params = storage_bytes(main, exclude=param_storages)[0]
    return TrainStates(num_params=num_params, weights=weights, grads=grads, main_params=main_params,
                       optimizer=storage_bytes(opt_state)[0])


def linear_weight_bytes(models: list[torch.nn.Module]) -> int:
    """Bytes of the weights every megatron linear of `models` (unwrapped GPTModels, `MegatronModel.unwrapped`)
    multiplies by: what the built-in engine's packed linears (generate_config.packed_linear) copy once per
    generate call. A tied LM head has no weight of its own: megatron passes it the embedding's, which is
    packed like any other."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    seen: dict[int, torch.Tensor] = {}
    for model in models:
        for m in model.modules():
            if isinstance(m, (ColumnParallelLinear, RowParallelLinear)) and getattr(m, "weight", None) is not None:
                seen[id(m.weight)] = m.weight
        if getattr(model, "post_process", False) and getattr(model, "share_embeddings_and_output_weights", False):
            w = model.shared_embedding_or_output_weight()
            seen[id(w)] = w
    return sum(w.numel() * w.element_size() for w in seen.values())


def frozen_weight_bytes(chunks: list[torch.nn.Module]) -> tuple[int, int]:
    """(parameters, bytes) of a frozen model's chunks (the reference, a rollout copy)."""
    params = {id(p): p for c in chunks for p in c.parameters()}
    return sum(p.numel() for p in params.values()), storage_bytes(params.values())[0]
