"""The rollout layout (TP x EP, PP = 1, the rest data-parallel replicas) and its megatron parallel state.

A built-in engine that generates in a layout other than the trainer's needs a megatron model
whose layers talk over the rollout's TP / EP groups. megatron-core 0.16.1 threads explicit groups
(`pg_collection`) through most layers, but some paths still read `megatron.core.parallel_state`
(CPU weight init in tensor_parallel/layers.py), and so do ours (`mindrl.models.layout.shard_specs`,
the engine's expert-group checks). So we keep *two complete parallel states* and swap megatron's
module globals between them: `RolloutParallelState.active()` installs the rollout groups for the
duration of a block (building the rollout model, loading its shard, generating) and restores the
trainer's afterwards. Every group is created once, by every rank in the same order
(`initialize_model_parallel`), so the swap itself costs nothing and talks to nobody. Layers built
inside the block keep the rollout groups they captured; the trainer never runs inside it.

Every rollout group gets the collective timeout of the trainer's groups
(`rl_config.launcher.collective_timeout_s`; `mindrl.backends.distributed.initialize_model_parallel`).

May import: torch, megatron-core, mindrl.backends.distributed.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch.distributed as dist
from megatron.core import parallel_state as ps

from mindrl.backends.distributed import initialize_model_parallel

_GLOBAL = re.compile(r"^_[A-Z][A-Z0-9_]*$")


@dataclass(frozen=True)
class RolloutLayout:
    """Rollout tensor / expert parallel sizes; PP is always 1 and the remaining ranks are replicas.
    Checked against the model and world by mindrl.config.validate (`_rollout_layout_errors`)."""

    tp: int = 1
    ep: int = 1

    def replicas(self, world_size: int) -> int:
        return world_size // self.tp


def _snapshot() -> dict[str, Any]:
    return {k: v for k, v in vars(ps).items() if _GLOBAL.match(k)}


def _install(state: dict[str, Any]) -> None:
    for k, v in state.items():
        setattr(ps, k, v)


class RolloutParallelState:
    """megatron parallel state of the rollout layout, kept beside the trainer's (see module docstring).

    Collective to build (every rank, same order); afterwards `active()` is local."""

    def __init__(self, layout: RolloutLayout, timeout_s: float | None = None) -> None:
        """`timeout_s`: every rollout group's collective timeout (None: the launcher's
        `collective_timeout_s`, as for the trainer's groups; mindrl.backends.distributed)."""
        if not ps.model_parallel_is_initialized():
            raise RuntimeError("RolloutParallelState needs the trainer's parallel state set up first")
        self.layout = layout
        self._training = _snapshot()
        try:
            ps.destroy_model_parallel()
            initialize_model_parallel(timeout_s, tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=1,
                                      expert_model_parallel_size=layout.ep)
            self._rollout = _snapshot()
        finally:
            _install(self._training)
        self._depth = 0

    @contextmanager
    def active(self) -> Iterator[None]:
        """Rollout groups in megatron's globals inside the block (re-entrant); the trainer's after."""
        outer = _snapshot() if self._depth == 0 else None
        if self._depth == 0:
            _install(self._rollout)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if outer is not None:
                _install(outer)

    def replica(self) -> tuple[int, int]:
        """(this rank's rollout replica, number of replicas): the rollout data-parallel rank and size."""
        with self.active():
            return ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()

    def tp_rank(self) -> int:
        with self.active():
            return ps.get_tensor_model_parallel_rank()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def vllm_expert_ids(model: Any) -> list[int] | None:
    """The global routed-expert ids a vLLM model's layers hold on this rank (None: every expert, or
    no routed experts): what the weight push should send this rank (`iter_hf_buckets(experts=)`).

    Read from vLLM's own placement, the `expert_map_manager` of each routed-experts layer
    (vLLM 0.32, `fused_moe/expert_map_manager.py`: `get_local_expert_ids()`; the layer's weight
    loader skips every other id). The union over layers, so a per-layer placement (EPLB) still gets
    every expert it holds. Not verified with vllm-ascend, whose MoE layers may keep it elsewhere:
    a model with no such layer gets None, i.e. every expert (the safe default)."""
    held: set[int] = set()
    total = 0
    for module in model.modules():
        manager = getattr(module, "expert_map_manager", None)
        if manager is None or not hasattr(manager, "get_local_expert_ids"):
            continue
        total = max(total, int(manager.global_num_experts))
        held.update(int(e) for e in manager.get_local_expert_ids())
    if not total or len(held) >= total:
        return None
    return sorted(held)

