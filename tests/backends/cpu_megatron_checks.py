"""Checks for each cpu-backend adaptation, run in a fresh process by test_cpu_megatron.py.

Prints one JSON object: adaptation name -> "ok" or the error. With --unpatched it checks that
megatron really needs them (the same calls fail without the adaptations).
"""
from __future__ import annotations

import json
import os
import sys
import traceback
import warnings

import torch

warnings.filterwarnings("ignore")


def check(results: dict, name: str, fn) -> None:
    try:
        fn()
        results[name] = "ok"
    except Exception:  # noqa: BLE001 - report every failure by name
        results[name] = traceback.format_exc(limit=3)


def checks_patched() -> dict:
    from mindrl.backends import cpu_megatron

    applied = cpu_megatron.apply()
    results: dict = {"applied": applied}
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[-1])
    dist.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core import parallel_state as ps
    ps.initialize_model_parallel(1, 1)

    def rng():
        from megatron.core.tensor_parallel import get_cuda_rng_tracker, model_parallel_cuda_manual_seed
        model_parallel_cuda_manual_seed(7)
        before = torch.get_rng_state()
        with get_cuda_rng_tracker().fork():
            a = torch.rand(3)
        assert torch.equal(torch.get_rng_state(), before), "fork must restore the default RNG state"
        model_parallel_cuda_manual_seed(7)
        with get_cuda_rng_tracker().fork():
            b = torch.rand(3)
        assert torch.equal(a, b), "the tracker must be deterministic for a seed"
    check(results, "rng_tracker_on_cpu_generator", rng)

    def current_device():
        assert torch.cuda.current_device() == "cpu"
        assert torch.empty(2, device=torch.cuda.current_device()).device.type == "cpu"
    check(results, "current_device_is_cpu", current_device)

    def placement():
        t = torch.zeros(2, device="cuda")
        assert t.device.type == "cpu"
        assert t.cuda() is t
        assert t.to("cuda").device.type == "cpu"
        assert torch.empty(2, pin_memory=True).device.type == "cpu"
        assert t.type() == "torch.cuda.FloatTensor" and t.bfloat16().type() == "torch.cuda.BFloat16Tensor"
        assert t.type(torch.float64).dtype == torch.float64  # with arguments it still converts
        assert torch.cuda.is_available() is False, "we never pretend there is a GPU"
        # what megatron's optimizer does with these: FP32Optimizer's tensor(..., device='cuda')
        from megatron.core.transformer.utils import get_default_causal_mask
        assert get_default_causal_mask(4).device.type == "cpu"
    check(results, "cuda_placement_to_cpu", placement)

    def streams():
        torch.cuda.synchronize()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        assert e.query()
        with torch.cuda.stream(s):
            pass
        torch.cuda.empty_cache()
        torch.cuda.nvtx.range_push("x")
        torch.cuda.nvtx.range_pop()
    check(results, "null_streams_events_sync", streams)

    def moe():
        import numpy as np
        import megatron.core.transformer.moe.moe_utils as moe_utils
        import megatron.core.transformer.moe.token_dispatcher as td
        assert moe_utils.te_general_gemm is None
        out = td.maybe_move_tensor_to_cpu(torch.tensor([1, 2]), as_numpy=True)
        assert isinstance(out, np.ndarray) and out.tolist() == [1, 2]
    check(results, "moe_without_transformer_engine", moe)

    def gloo_avg():
        import tempfile
        from pathlib import Path
        from mindrl.utils.launch import spawn
        with tempfile.TemporaryDirectory() as tmp:
            spawn(_avg_rank, 2, tmp)
            got = sorted(Path(tmp, f).read_text() for f in ("0", "1"))
        # rank r contributes (r+1) * [1, 2]: the average is [1.5, 3.0]; each rank keeps its half
        assert got == ["1.5 1.5 3.0", "1.5 3.0 3.0"], got
    check(results, "gloo_average_reduce", gloo_avg)

    def uneven():
        import tempfile
        from pathlib import Path
        from mindrl.utils.launch import spawn
        with tempfile.TemporaryDirectory() as tmp:
            spawn(_uneven_rank, 2, tmp)
            got = [Path(tmp, f).read_text() for f in ("0", "1")]
        gathered = "[0.0, 1.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0]"
        assert got == [f"{gathered} [3.0, 3.0]", f"{gathered} [3.0, 3.0, 3.0, 3.0, 3.0, 3.0]"], got
    check(results, "gloo_uneven_collectives", uneven)
    results["idempotent"] = "ok" if cpu_megatron.apply() == applied else "apply() changed on second call"
    return results


def _avg_rank(tmp: str) -> None:
    """One of two ranks: AVG all-reduce and reduce-scatter through the emulation path."""
    import torch.distributed as dist
    from mindrl.backends import cpu_megatron
    cpu_megatron.apply()
    cpu_megatron._FORCE_AVG_EMULATION = True
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    t = torch.tensor([1.0, 2.0]) * (rank + 1)
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    out = torch.zeros(1)
    dist.reduce_scatter_tensor(out, torch.tensor([1.0, 2.0]) * (rank + 1), op=dist.ReduceOp.AVG)
    with open(f"{tmp}/{rank}", "w") as f:
        f.write(" ".join(str(x) for x in sorted(t.tolist() + out.tolist())))
    dist.destroy_process_group()


def _uneven_rank(tmp: str) -> None:
    """One of two ranks: all_gather / reduce_scatter with blocks of 1 and 3 rows."""
    import torch.distributed as dist
    from mindrl.backends import cpu_megatron
    cpu_megatron.apply()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    sizes = [1, 3]
    mine = torch.arange(sizes[rank] * 2, dtype=torch.float32).view(sizes[rank], 2) + 10 * rank
    out = [torch.empty(n, 2) for n in sizes]
    dist.all_gather(out, mine)
    gathered = torch.cat(out).flatten().tolist()
    inputs = [torch.full((n, 2), float(rank + 1)) for n in sizes]  # rank r sends (r+1) to every block
    result = torch.empty(sizes[rank], 2)
    dist.reduce_scatter(result, inputs)
    with open(f"{tmp}/{rank}", "w") as f:
        f.write(f"{gathered} {result.flatten().tolist()}")
    dist.destroy_process_group()


def checks_unpatched() -> dict:
    """Without the adaptations, the same calls must fail: the adaptations are needed."""
    results = {}

    def expect_failure(name, fn):
        try:
            fn()
            results[name] = "did not fail"
        except Exception:  # noqa: BLE001
            results[name] = "fails"
    expect_failure("current_device", lambda: torch.cuda.current_device())
    expect_failure("cuda_factory", lambda: torch.zeros(1, device="cuda"))
    expect_failure("rng_state", lambda: torch.cuda.get_rng_state())
    return results


if __name__ == "__main__":
    print(json.dumps(checks_unpatched() if "--unpatched" in sys.argv else checks_patched()))
