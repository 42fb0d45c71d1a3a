"""Adapt megatron-core (pinned 0.16.1) to a CPU-only torch build with the gloo backend.

megatron-core hard-codes CUDA in places: the RNG tracker, `torch.cuda.current_device()` used as a
`device=` argument, `device="cuda"` factory calls, `Tensor.cuda()`, `pin_memory=True`,
`Tensor.type() == "torch.cuda.FloatTensor"` checks in its optimizers, streams/events/nvtx, and a
few gaps that only show without TransformerEngine. This module redirects each of those to the CPU,
the same idea as torch_npu's `transfer_to_npu` (which redirects `torch.cuda` to the NPU).

Rules:
- `apply()` is called once per process by `CpuBackend.setup_process()`, before models or
  optimizers are built. It is idempotent. It is process-wide, which is why each megatron test runs
  in its own process.
- Every adaptation is a named function in `ADAPTATIONS`, documented where it is defined, and
  covered by a test in tests/backends/test_cpu_megatron.py.
- `torch.cuda.is_available()` keeps returning False: we never pretend there is a GPU, we only make
  megatron's unconditional CUDA calls land on the CPU.
- The device-rewriting TorchFunctionMode is pushed on the calling thread (torch modes are
  thread-local); call `apply()` again from any new thread that runs megatron code.

Things we do *not* patch here, because they are choices rather than bugs, and live in the model
spec instead (mindrl/models/spec.py): the sequence-parallel-aware torch norm, MLA's TP-duplicated
KV down-projection, and the core attention (torch SDPA, which also takes MLA's K/V head sizes).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

_lock = threading.Lock()
_applied: list[str] = []
_thread_local = threading.local()


def _is_cuda(dev: Any) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return False


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placement requests to the CPU for every torch call on this thread.

    - `device="cuda[:N]"` / `torch.device("cuda")` in factory calls -> "cpu"
    - `Tensor.cuda()` -> the tensor itself; `Tensor.to("cuda")` -> `.to("cpu")`
    - `pin_memory=True` -> False and `Tensor.pin_memory()` -> itself (pinning needs an accelerator)
    - `Tensor.type()` (no args) reports "torch.cuda.FloatTensor" etc.: megatron's optimizers and
      grad clipping assert/branch on those strings.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = dict(kwargs or {})
        dev = kwargs.get("device")
        if dev is not None and _is_cuda(dev):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.pin_memory:
            return args[0]
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu") + tuple(args[2:])
        return func(*args, **kwargs)


class _NullStream:
    """Stand-in for torch.cuda.Stream: CPU work is synchronous, so every wait is a no-op."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_event(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, *args: Any, **kwargs: Any) -> "_NullEvent":
        return _NullEvent()


class _NullEvent:
    """Stand-in for torch.cuda.Event."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


# --------------------------------------------------------------------------------------------
# The adaptations, in the order they are applied.
# --------------------------------------------------------------------------------------------


def rng_tracker_on_cpu_generator() -> None:
    """Megatron's CUDA RNG tracker (TP/EP/DP seeds, activation-checkpoint forks) -> CPU generator.

    `torch.cuda.manual_seed` is routed to the default generator directly: routing it through
    `torch.manual_seed` would recurse (that calls `torch.cuda.manual_seed_all`).
    """
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    torch.cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    torch.cuda.manual_seed_all = lambda seed: torch.default_generator.manual_seed(int(seed))
    import megatron.core.tensor_parallel.random as mrandom

    mrandom._get_cuda_rng_state = lambda device="cuda", clone=False, graph_safe=False: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)


def current_device_is_cpu() -> None:
    """`torch.cuda.current_device()` is used as a `device=` argument all over megatron -> "cpu"."""
    torch.cuda.current_device = lambda: "cpu"


def cuda_placement_to_cpu() -> None:
    """Push `CudaToCpuMode` on this thread (see its docstring)."""
    if getattr(_thread_local, "mode", None) is None:
        mode = CudaToCpuMode()
        mode.__enter__()  # stays pushed for the life of the thread
        _thread_local.mode = mode


def null_streams_events_sync() -> None:
    """Streams, events, synchronize, empty_cache and NVTX ranges are no-ops on the CPU."""
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.Stream = _NullStream
    torch.cuda.Event = _NullEvent
    torch.cuda.current_stream = lambda *a, **k: _NullStream()
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.empty_cache = lambda: None
    import sys

    import torch.cuda.nvtx as nvtx

    originals = {n: getattr(nvtx, n) for n in ("range_push", "range_pop", "mark", "range_start", "range_end")
                 if hasattr(nvtx, n)}
    for name in originals:
        setattr(nvtx, name, lambda *a, **k: None)
    # Modules that did `from torch.cuda.nvtx import range_push` hold the original: swap it there too.
    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("megatron") and mod is not None:
            for name, fn in originals.items():
                if getattr(mod, name, None) is fn:
                    setattr(mod, name, getattr(nvtx, name))


def moe_without_transformer_engine() -> None:
    """Two MoE gaps that only show without TransformerEngine, on CPU.

    - 0.16.1's `moe_utils` references `te_general_gemm` even when TE is absent (NameError in the
      router): define it as None, which is what the TE-present branch checks against.
    - The all-to-all dispatcher converts split sizes with `maybe_move_tensor_to_cpu(as_numpy=True)`,
      which only converts *CUDA* tensors; gloo's `all_to_all_single` needs Python/numpy sizes.
    """
    import megatron.core.transformer.moe.moe_utils as moe_utils
    import megatron.core.transformer.moe.token_dispatcher as token_dispatcher

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None

    def maybe_move_tensor_to_cpu(tensor: Any, as_numpy: bool = False, record_stream: bool = False) -> Any:
        if torch.is_tensor(tensor):
            tensor = tensor.detach().cpu()
            if as_numpy:
                tensor = tensor.numpy()
        return tensor

    moe_utils.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
    token_dispatcher.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu


def gloo_average_reduce() -> None:
    """`ReduceOp.AVG` on gloo, which megatron uses (finalize_model_grads for TP-averaged grads, MoE
    aux-loss trackers, `average_in_collective`). torch 2.13's gloo has it; older gloo builds raise
    "Cannot use ReduceOp.AVG with Gloo". Try the native op, and only where it is refused emulate
    it: SUM, then divide by the group size (same result, one extra elementwise op)."""
    if getattr(dist.all_reduce, "_mindrl_avg", False):
        return
    original_all_reduce = dist.all_reduce
    original_reduce_scatter = dist.reduce_scatter_tensor

    def _needs_emulation(op: Any, group: Any) -> bool:
        return op == dist.ReduceOp.AVG and (_FORCE_AVG_EMULATION or _gloo_lacks_avg(group))

    def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):  # noqa: ANN001
        if _needs_emulation(op, group):
            original_all_reduce(tensor, op=dist.ReduceOp.SUM, group=group, async_op=False)
            tensor.div_(dist.get_world_size(group))
            return _DoneWork() if async_op else None
        return original_all_reduce(tensor, op=op, group=group, async_op=async_op)

    def reduce_scatter_tensor(output, input, op=dist.ReduceOp.SUM, group=None, async_op=False):  # noqa: A002,ANN001
        if _needs_emulation(op, group):
            original_reduce_scatter(output, input, op=dist.ReduceOp.SUM, group=group, async_op=False)
            output.div_(dist.get_world_size(group))
            return _DoneWork() if async_op else None
        return original_reduce_scatter(output, input, op=op, group=group, async_op=async_op)

    all_reduce._mindrl_avg = True  # type: ignore[attr-defined]
    all_reduce.__wrapped_original__ = original_all_reduce  # type: ignore[attr-defined]
    dist.all_reduce = all_reduce
    dist.reduce_scatter_tensor = reduce_scatter_tensor


_FORCE_AVG_EMULATION = False  # tests set it to exercise the emulation on a gloo that has AVG
_avg_support: dict[int, bool] = {}


def _gloo_lacks_avg(group: Any) -> bool:
    """Probe once per group size whether this gloo build accepts AVG (a 1-element all-reduce)."""
    if dist.get_backend(group) != "gloo":
        return False
    size = dist.get_world_size(group)
    if size not in _avg_support:
        try:
            dist.all_reduce.__wrapped_original__(torch.zeros(1), op=dist.ReduceOp.AVG, group=group)  # type: ignore
            _avg_support[size] = True
        except (RuntimeError, ValueError):
            _avg_support[size] = False
    return not _avg_support[size]


class _DoneWork:
    """What an async collective returns once it has already completed."""

    def wait(self, *args: Any, **kwargs: Any) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


def gloo_uneven_collectives() -> None:
    """Uneven `all_gather` and `reduce_scatter` on gloo. megatron's MoE dispatch with expert-TP
    gathers and reduce-scatters token blocks of different sizes per rank (`output_split_sizes`);
    gloo requires equal sizes for all_gather and has no list reduce_scatter. Emulate both by
    padding every block to the largest, using the equal-size collective, and trimming."""
    if getattr(dist.all_gather, "_mindrl_uneven", False):
        return
    original_all_gather = dist.all_gather
    original_reduce_scatter = dist.reduce_scatter

    def all_gather(tensor_list, tensor, group=None, async_op=False):  # noqa: ANN001
        if dist.get_backend(group) != "gloo" or all(t.shape == tensor.shape for t in tensor_list):
            return original_all_gather(tensor_list, tensor, group=group, async_op=async_op)
        rows = max(t.shape[0] for t in tensor_list)
        padded = tensor.new_zeros((rows, *tensor.shape[1:]))
        padded[:tensor.shape[0]] = tensor
        bufs = [torch.empty_like(padded) for _ in tensor_list]
        original_all_gather(bufs, padded, group=group)
        for out, buf in zip(tensor_list, bufs):
            out.copy_(buf[:out.shape[0]])
        return _DoneWork() if async_op else None

    def reduce_scatter(output, input_list, op=dist.ReduceOp.SUM, group=None, async_op=False):  # noqa: ANN001
        if dist.get_backend(group) != "gloo":
            return original_reduce_scatter(output, input_list, op=op, group=group, async_op=async_op)
        rows = max(t.shape[0] for t in input_list)
        stacked = input_list[0].new_zeros((len(input_list), rows, *input_list[0].shape[1:]))
        for i, t in enumerate(input_list):
            stacked[i, :t.shape[0]] = t
        dist.all_reduce(stacked, op=op, group=group)  # the AVG-aware wrapper when installed
        output.copy_(stacked[dist.get_rank(group), :output.shape[0]])
        return _DoneWork() if async_op else None

    all_gather._mindrl_uneven = True  # type: ignore[attr-defined]
    dist.all_gather = all_gather
    dist.reduce_scatter = reduce_scatter


ADAPTATIONS: dict[str, Callable[[], None]] = {
    "rng_tracker_on_cpu_generator": rng_tracker_on_cpu_generator,
    "current_device_is_cpu": current_device_is_cpu,
    "cuda_placement_to_cpu": cuda_placement_to_cpu,
    "null_streams_events_sync": null_streams_events_sync,
    "moe_without_transformer_engine": moe_without_transformer_engine,
    "gloo_average_reduce": gloo_average_reduce,
    "gloo_uneven_collectives": gloo_uneven_collectives,
}


def apply() -> list[str]:
    """Apply every adaptation once per process (the placement mode once per thread).

    Returns the names applied so far. Safe to call repeatedly.
    """
    with _lock:
        if not _applied:
            if torch.cuda.is_available():
                raise RuntimeError("cpu_megatron.apply() on a machine with CUDA: use the cuda backend")
            for name, adapt in ADAPTATIONS.items():
                adapt()
                _applied.append(name)
        else:
            cuda_placement_to_cpu()  # a new thread needs its own mode
    return list(_applied)


def applied() -> list[str]:
    return list(_applied)
