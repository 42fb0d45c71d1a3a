"""`perf/*` metrics of a GRPO step: model FLOPs (mindrl.models.flops) over time, and over the device's
matmul peak (the backend's `peak_flops`): model-FLOPs utilisation, per device.

Every data-parallel rank counts the FLOPs of its own groups; the counts are summed over the DP group
(TP / PP ranks of one DP group share that work), so `perf/mfu` = all ranks' model FLOPs / (world size
x step seconds x one device's peak). With no known peak (an unlisted card, fp32 on a GPU) only the
achieved FLOP/s are logged.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from mindrl.backends import get_backend
from mindrl.models.flops import FlopModel, flop_model, step_flops

_PHASES = ("rollout", "reference", "old_log_probs", "update")
_cache: dict[str, Any] = {}


def _model_and_peak(run: Any) -> tuple[FlopModel, float | None]:
    plan = run.actor.model.plan
    if "fm" not in _cache or _cache["hf"] is not plan.hf:
        _cache.update(hf=plan.hf, fm=flop_model(plan.hf),
                      peak=get_backend(run.cfg.backend).peak_flops(plan.config.params_dtype))
    return _cache["fm"], _cache["peak"]


def perf_metrics(run: Any, generated: Sequence[Any], trained: Sequence[Any], seconds: dict[str, float], *,
                 old_log_probs: bool) -> dict[str, float]:
    """perf/tflop (the step's model FLOPs, all ranks, in 1e12) and perf/tflop_<phase> for each phase that
    ran, perf/tflops_per_device, and with a known
    peak perf/mfu (whole step) and perf/mfu_<phase> for each phase that ran (rollout, reference,
    old_log_probs, update; over that phase's time/<phase>). `generated`: every group generated this
    step (with `.prompt`, `.outputs`); `trained`: those trained on (a prefix of the kept ones)."""
    fm, peak = _model_and_peak(run)
    index = {id(g): i for i, g in enumerate(generated)}
    parts = step_flops(fm, [len(g.prompt) for g in generated],
                       [[len(o.token_ids) for o in g.outputs] for g in generated],
                       trained=[index[id(g)] for g in trained if id(g) in index], reference=run.reference is not None,
                       old_log_probs=old_log_probs, epochs=run.cfg.rl_config.epochs)
    packed = torch.tensor([float(parts[k]) for k in (*_PHASES, "total")], dtype=torch.float64)
    dist.all_reduce(packed, group=ps.get_data_parallel_group())
    totals = dict(zip((*_PHASES, "total"), packed.tolist()))
    world = dist.get_world_size()
    step_s = max(seconds.get("time/step", sum(seconds.values())), 1e-9)
    per_device = totals["total"] / world / step_s
    out = {"perf/tflop": totals["total"] / 1e12, "perf/tflops_per_device": per_device / 1e12}
    out.update({f"perf/tflop_{phase}": totals[phase] / 1e12 for phase in _PHASES if totals[phase]})
    if peak:
        out["perf/mfu"] = per_device / peak
        for phase in _PHASES:
            t = seconds.get(f"time/{phase}", 0.0)
            if totals[phase] and t > 0:
                out[f"perf/mfu_{phase}"] = totals[phase] / world / t / peak
    return out
