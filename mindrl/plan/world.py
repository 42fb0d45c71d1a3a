"""One simulated rank of a job's world, in this process, without devices or peers.

`simulated_rank(rank, world, tp=, pp=, ep=, ...)` sets up torch.distributed with torch's `fake`
backend (every collective returns at once, nothing is sent) at `rank` of `world`, then megatron's
real parallel state for the layout, so megatron-core builds exactly the modules, DDP buffers and
optimizer shards that rank would build. Inside, every tensor is a `FakeTensor` (torch's
`FakeTensorMode`): shapes, dtypes and storages are real, memory is never allocated, so a rank of a
671B model is built in about a second.

What had to be adapted (each is undone on exit):
- megatron creates gloo side groups, which the fake world cannot host: `create_group` is asked for
  the default (fake) backend instead;
- megatron's optimizer aligns its param groups with `all_gather_object`, which a fake world cannot
  answer: every rank is taken to have this rank's groups (ranks of one layout build the same kinds);
- `Module.bfloat16()` / `.half()` (megatron's `Float16Module` casts its module) swap each fake
  parameter for a new one, which FakeTensorMode refuses (it holds weak references to its tensors):
  the same casts are done in place (`param.data = param.to(dtype)`, buffers replaced), skipping
  tensors already in that dtype;
- megatron-core's unconditional CUDA calls go to the CPU (the cpu backend's `cpu_megatron.apply()`;
  process-wide, which is why `python -m mindrl.plan` and validate()'s memory check run the planner in
  a process of their own).

May import: torch, megatron-core, mindrl.backends.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.distributed as dist


def _cast_in_place(dtype: torch.dtype):  # noqa: ANN202
    def cast(module: torch.nn.Module) -> torch.nn.Module:
        for m in module.modules():
            for p in m._parameters.values():
                if p is not None and p.is_floating_point() and p.dtype != dtype:
                    p.data = p.data.to(dtype)
            for k, b in m._buffers.items():
                if b is not None and b.is_floating_point() and b.dtype != dtype:
                    m._buffers[k] = b.to(dtype)
        return module
    return cast


@contextlib.contextmanager
def simulated_rank(rank: int, world: int, *, tp: int = 1, pp: int = 1, ep: int = 1, vpp: int | None = None,
                   etp: int | None = None, seed: int = 1234) -> Iterator[Any]:
    """Fake process group at `rank` of `world` + megatron parallel state + FakeTensorMode. Yields the mode."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from mindrl.backends import cpu_megatron

    cpu_megatron.apply()
    if dist.is_initialized():
        raise RuntimeError("simulated_rank needs a process without a process group (run the planner in its own "
                           "process)")
    create_group, all_gather_object = ps.create_group, dist.all_gather_object

    def fake_group(ranks=None, timeout=None, backend=None, **kwargs):  # noqa: ANN001, ANN202
        return create_group(ranks=ranks, timeout=timeout, backend=None, **kwargs)

    def same_objects(output: list, obj: Any, group: Any = None) -> None:
        output[:] = [obj] * len(output)

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    ps.create_group, dist.all_gather_object = fake_group, same_objects
    casts = torch.nn.Module.bfloat16, torch.nn.Module.half
    torch.nn.Module.bfloat16, torch.nn.Module.half = _cast_in_place(torch.bfloat16), _cast_in_place(torch.float16)
    try:
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                     virtual_pipeline_model_parallel_size=vpp, expert_model_parallel_size=ep,
                                     expert_tensor_parallel_size=etp)
        torch.manual_seed(seed)
        model_parallel_cuda_manual_seed(seed)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            yield mode
    finally:
        ps.create_group, dist.all_gather_object = create_group, all_gather_object
        torch.nn.Module.bfloat16, torch.nn.Module.half = casts
        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
        dist.destroy_process_group()


def first_rank_of_stage(stage: int, world: int, pp: int) -> int:
    """The global rank of TP rank 0, DP rank 0 (EP rank 0) of pipeline stage `stage` (megatron's default
    order tp-cp-ep-dp-pp: the pipeline dimension is the slowest)."""
    return stage * (world // pp)
