"""`python -m mindrl.plan --suggest [N]`: the cheapest training layouts (TP / PP / EP / offload) of N devices
whose plan fits the device, ranked by the crude step cost of `cost.py`.

1. Candidates: every TP dividing N, PP dividing N / TP (at most the layer count), EP dividing the routed
   experts, `offload_train_state` off and on, applied to the recipe; a PP that does not divide the layers
   gets a balanced `num_layer_list` (the recipe's own list at the recipe's PP); virtual stages are kept
   only at the recipe's PP. Each candidate must pass `validate()` (divisibility, EP, vLLM rollout rules,
   batch sizes): its rules are not copied here. Everything else (micro-batch, recompute, rollout layout,
   dtype) stays the recipe's.
2. Parameter bytes (no formula for memory): per (TP, EP) a model of one layer of each kind (dense, MoE)
   is built on a simulated rank (`world.simulated_rank`) and its parameters counted per layer kind,
   embedding and output layer; a stage's count is the sum over its layers. A lower bound of each stage's
   bytes follows: the weights (+ fp32 grads, + the reference copy, + without the distributed optimizer the
   fp32 main params and Adam moments) in training; in the rollout, the weights (+ grads unless offloaded)
   + the reference + vLLM's share of the device. A candidate whose bound exceeds the device is dropped.
3. The rest, cheapest first: the stage with the largest bound is built as `plan_job` builds it, without
   activations (`ranks.train_rank`): if one of its phases does not fit even so, the candidate does not
   fit. Otherwise the whole job is planned (`phases.plan_job`); the offload variants of one training
   layout share its stage builds and activation runs (the same modules), the rollout rank is built once
   per rollout layout, so a listed plan is exactly the plain planner's. Planning stops when `top`
   layouts fit; costlier candidates are not planned.

May import: mindrl.config, mindrl.models, mindrl.workers (PolicySpec), mindrl.plan.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

from mindrl.config import MindRLConfig, validate
from mindrl.plan.cost import StageParams, step_cost
from mindrl.plan.phases import JobPlan, _rank_phases, gib, micro_batches_per_update, plan_job
from mindrl.plan.ranks import (_attention, _num_experts, _overrides, rollout_layout, rollout_rank, shares_weights,
                               train_plan, train_rank, uses_reference)


@dataclass
class Candidate:
    tp: int
    pp: int
    ep: int
    offload: bool
    num_layer_list: list[int] | None
    vps: int | None
    cost: float = 0.0
    cost_parts: dict[str, float] = field(default_factory=dict)
    bound: int = 0  # the largest stage's lower bound (bytes)
    status: str = ""  # "fits" | "does not fit" | "pruned" | "not planned"
    why: str = ""
    peak: int | None = None  # the plan's heaviest peak (planned candidates)

    @property
    def name(self) -> str:
        return f"TP{self.tp} PP{self.pp} EP{self.ep}{' offload' if self.offload else ''}"

    def overrides(self, devices: int) -> list[str]:
        nll = "null" if self.num_layer_list is None else "[" + ",".join(map(str, self.num_layer_list)) + "]"
        return [f"rl_config.actor_resource.num_npus={devices}", f"actor_config.tensor_model_parallel_size={self.tp}",
                f"actor_config.pipeline_model_parallel_size={self.pp}",
                f"actor_config.expert_model_parallel_size={self.ep}", f"actor_config.num_layer_list={nll}",
                f"actor_config.num_layers_per_virtual_pipeline_stage={'null' if self.vps is None else self.vps}",
                f"generate_config.offload_train_state={str(self.offload).lower()}"]

    def apply(self, cfg: MindRLConfig, devices: int) -> MindRLConfig:
        c = copy.deepcopy(cfg)
        c.rl_config.actor_resource.num_npus = devices
        a = c.actor_config
        a.tensor_model_parallel_size, a.pipeline_model_parallel_size, a.expert_model_parallel_size = \
            self.tp, self.pp, self.ep
        a.num_layer_list, a.num_layers_per_virtual_pipeline_stage = self.num_layer_list, self.vps
        c.generate_config.offload_train_state = self.offload
        return c


@dataclass
class Suggestion:
    devices: int
    capacity: int
    fitting: list[Candidate]
    candidates: list[Candidate]  # every valid candidate, cheapest first
    invalid: dict[str, int]  # validate()'s first error -> how many candidates it refused
    seconds: float
    plans: dict[str, JobPlan] = field(default_factory=dict)  # by candidate name, the planned ones

    def to_json(self) -> dict[str, Any]:
        def one(c: Candidate) -> dict[str, Any]:
            return {"name": c.name, "tp": c.tp, "pp": c.pp, "ep": c.ep, "offload": c.offload,
                    "num_layer_list": c.num_layer_list, "cost_s": c.cost, "cost_parts": c.cost_parts,
                    "bound": c.bound, "status": c.status, "why": c.why, "peak": c.peak,
                    "overrides": c.overrides(self.devices)}
        return {"devices": self.devices, "capacity": self.capacity, "fits": bool(self.fitting),
                "suggested": [one(c) for c in self.fitting], "candidates": [one(c) for c in self.candidates],
                "invalid": self.invalid, "seconds": self.seconds}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def balanced_layers(num_layers: int, pp: int) -> list[int] | None:
    """None when PP divides the layers; else a split whose extra layers go to the middle stages first (the first
    holds the embedding, the last the output layer), then the last, then the first."""
    if num_layers % pp == 0:
        return None
    base, extra = divmod(num_layers, pp)
    order = list(range(1, pp - 1)) + [pp - 1, 0]
    counts = [base] * pp
    for s in order[:extra]:
        counts[s] += 1
    return counts


def candidates(cfg: MindRLConfig, devices: int) -> tuple[list[Candidate], dict[str, int]]:
    """Every layout of `devices` ranks that validate() accepts, and the count of each first error of the rest."""
    spec_plan = train_plan(cfg)
    num_layers = spec_plan.config.num_layers
    experts = _num_experts(spec_plan.hf) or 1
    a = cfg.actor_config
    valid, invalid = [], {}
    for tp in _divisors(devices):
        for pp in _divisors(devices // tp):
            if pp > num_layers:
                continue
            own_pp = pp == a.pipeline_model_parallel_size
            nll = a.num_layer_list if own_pp and a.num_layer_list else balanced_layers(num_layers, pp)
            vps = a.num_layers_per_virtual_pipeline_stage if own_pp else None
            for ep in _divisors(experts):
                for offload in (False, True):
                    c = Candidate(tp, pp, ep, offload, nll, vps)
                    errors = validate(c.apply(cfg, devices), check_paths=False)
                    if errors:
                        invalid[errors[0]] = invalid.get(errors[0], 0) + 1
                    else:
                        valid.append(c)
    return valid, invalid


def layer_census(cfg: MindRLConfig, tp: int, ep: int) -> dict[str, tuple[int, int]]:
    """Parameters (dense, routed-expert) of one rank at TP x EP: 'embedding', 'final' (final norm + output
    layer), and per layer kind '0' (dense MLP) / '1' (MoE), counted on a real model of one layer of each kind
    built on a simulated rank."""
    from mindrl.models import ParallelLayout
    from mindrl.models.builder import build_model
    from mindrl.plan.world import simulated_rank
    from mindrl.workers.bringup import PolicySpec

    spec = PolicySpec.from_config(cfg)
    full = train_plan(cfg, spec).config
    kinds = sorted(set(_pattern(full)))
    overrides = {**_overrides(_num_experts(spec.hf)), "num_layers": len(kinds)}
    if full.num_moe_experts:
        overrides["moe_layer_freq"] = kinds
    from mindrl.models import plan_model

    layout = ParallelLayout(tp=tp, ep=ep, sequence_parallel=cfg.megatron_training.sequence_parallel)
    plan = plan_model(spec.hf, layout, dtype=spec.dtype, use_cpu_initialization=True,
                      make_vocab_size_divisible_by=spec.make_vocab_size_divisible_by, **overrides)
    out: dict[str, list[int]] = {"embedding": [0, 0], "final": [0, 0], **{str(k): [0, 0] for k in kinds}}
    with simulated_rank(0, tp * ep, tp=tp, pp=1, ep=ep, seed=spec.seed):
        (gpt,) = build_model(plan, _attention(cfg.backend))
        for name, p in gpt.named_parameters():
            if name.startswith("embedding."):
                key = "embedding"
            elif name.startswith("decoder.layers."):
                key = str(kinds[int(name.split(".")[2])])
            else:
                key = "final"
            out[key][1 if ".mlp.experts." in name else 0] += p.numel()
    return {k: (v[0], v[1]) for k, v in out.items()}


def _pattern(config: Any) -> list[int]:
    """Each decoder layer's kind, 0 dense / 1 MoE, from megatron's moe_layer_freq (as stage_signatures reads it)."""
    n, freq = config.num_layers, config.moe_layer_freq
    if not config.num_moe_experts:
        return [0] * n
    return [1 if i % freq == 0 else 0 for i in range(n)] if isinstance(freq, int) else list(freq)


def stage_layers(num_layers: int, pp: int, nll: list[int] | None, vps: int | None) -> list[list[int]]:
    """The decoder layers each pipeline stage holds (megatron's assignment, virtual stages interleaved)."""
    if vps:
        chunks = num_layers // (pp * vps)
        return [[(c * pp + s) * vps + i for c in range(chunks) for i in range(vps)] for s in range(pp)]
    counts = nll or [num_layers // pp] * pp
    out, start = [], 0
    for n in counts:
        out.append(list(range(start, start + n)))
        start += n
    return out


def stage_params(cfg: MindRLConfig, census: dict[str, tuple[int, int]], pattern: list[int]) -> list[StageParams]:
    a = cfg.actor_config
    pp = a.pipeline_model_parallel_size
    out = []
    for s, layers in enumerate(stage_layers(len(pattern), pp, a.num_layer_list,
                                            a.num_layers_per_virtual_pipeline_stage)):
        keys = [str(pattern[i]) for i in layers] + (["embedding"] if s == 0 else []) + (["final"] if s == pp - 1
                                                                                        else [])
        out.append(StageParams(dense=sum(census[k][0] for k in keys), expert=sum(census[k][1] for k in keys),
                               moe_layers=sum(pattern[i] for i in layers), layers=len(layers)))
    return out


def lower_bound(cfg: MindRLConfig, s: StageParams, capacity: int, dtype_bytes: int) -> int:
    """A lower bound of the largest phase's bytes on a rank of this stage (see the module docstring): only
    tensors every such rank holds in full, so the planned phase is at least this."""
    params = s.dense + s.expert
    lora = cfg.actor_config.lora.rank > 0
    weights = params * dtype_bytes
    grads = 0 if lora else 4 * params
    ref = weights if uses_reference(cfg) and not lora else 0
    opt = 0
    if not cfg.megatron_training.use_distributed_optimizer and not lora:
        opt = params * ((4 if dtype_bytes < 4 else 0) + 8)
    train = weights + grads + ref + opt
    g = cfg.generate_config
    offload = g.offload_train_state and not shares_weights(cfg)
    rollout = weights + ref + (0 if offload else grads + opt)
    if g.engine == "vllm":
        rollout += int(g.gpu_memory_utilization * capacity)
    return max(train, rollout)


def suggest(cfg: MindRLConfig, devices: int, capacity: int, *, devices_per_node: int | None = None,
            top: int = 3, log: Any = None) -> Suggestion:
    """See the module docstring. `log(msg)` is told about each planned candidate (progress)."""
    t0 = time.perf_counter()
    if devices < 1:
        raise ValueError(f"--suggest {devices}: the device count must be >= 1")
    dpn = devices_per_node or min(devices, 8)
    if devices % dpn and devices > dpn:
        raise ValueError(f"--suggest {devices}: not a whole number of nodes of {dpn} devices (--devices-per-node)")
    valid, invalid = candidates(cfg, devices)
    if not valid:
        reasons = "; ".join(f"{msg} ({n} layouts)" for msg, n in sorted(invalid.items(), key=lambda kv: -kv[1])[:3])
        raise ValueError(f"--suggest {devices}: no layout of {devices} devices passes validate(): {reasons}")
    from mindrl.workers.bringup import PolicySpec

    spec = PolicySpec.from_config(cfg)
    plan0 = train_plan(cfg, spec)
    pattern = _pattern(plan0.config)
    dtype_bytes = 2 if cfg.megatron_training.bf16 else 4
    censuses: dict[tuple[int, int], dict] = {}
    for c in valid:
        cc = c.apply(cfg, devices)
        key = (c.tp, c.ep)
        if key not in censuses:
            censuses[key] = layer_census(cc, c.tp, c.ep)
        stages = stage_params(cc, censuses[key], pattern)
        c.cost, c.cost_parts = step_cost(cc, stages, micro_batches=micro_batches_per_update(cc), devices_per_node=dpn,
                                         dtype_bytes=dtype_bytes, hf=spec.hf)
        bounds = [lower_bound(cc, s, capacity, dtype_bytes) for s in stages]
        c.bound = max(bounds)
        c._heavy = bounds.index(c.bound)  # type: ignore[attr-defined]
        if c.bound > capacity:
            c.status, c.why = "pruned", f"parameter bytes: stage {c._heavy} needs at least {gib(c.bound)}"
    valid.sort(key=lambda c: (c.cost, c.tp * c.pp * c.ep, c.offload))
    fitting: list[Candidate] = []
    plans: dict[str, JobPlan] = {}
    acts: dict[tuple, dict] = {}  # activation runs per training layout
    builds: dict[tuple, dict] = {}  # stage builds per training layout
    rollouts: dict[tuple, Any] = {}  # rollout ranks per rollout layout
    states: dict[tuple, Any] = {}  # the heaviest stage's states-only build per training layout
    for c in valid:
        if c.status == "pruned":
            continue
        if len(fitting) >= top:
            c.status, c.why = "not planned", f"costlier than the {top} listed"
            continue
        cc = c.apply(cfg, devices)
        if log:
            log(f"planning {c.name} (estimated step {c.cost:.1f} s)")
        # Per training layout (the offload variants share them): plan_job's activation composition takes a layer
        # kind's increment from the first stage that has one, so reusing runs across PPs would change its result.
        layout = (c.tp, c.pp, c.ep, tuple(c.num_layer_list or ()), c.vps)
        act, built = acts.setdefault(layout, {}), builds.setdefault(layout, {})
        ro_key = (*rollout_layout(cc), cc.generate_config.engine)
        if ro_key not in rollouts:
            rollouts[ro_key] = rollout_rank(cc)
        ro = rollouts[ro_key]
        heavy = c._heavy  # type: ignore[attr-defined]
        key = layout + (heavy,)
        if key not in states:  # the heaviest stage's states alone (no activations): a real lower bound
            states[key] = train_rank(cc, heavy, activations=False)
        phases = _rank_phases(cc, states[key], ro, capacity, micro_batches_per_update(cc))
        bad = [p for p in phases if not p.fits]
        if bad:
            c.status = "does not fit"
            c.why = f"stage {heavy}'s states alone, phase '{bad[0].name}': {gib(bad[0].peak)}" + (
                f"; {bad[0].problem}" if bad[0].problem else "")
            continue
        plan = plan_job(cc, capacity=capacity, devices_per_node=dpn, cache=act, built=built, rollout=ro)
        plans[c.name] = plan
        c.peak = max(r.peak for r in plan.ranks)
        if plan.fits:
            c.status, c.why = "fits", f"headroom {gib(capacity - c.peak)}"
            fitting.append(c)
        else:
            c.status, c.why = "does not fit", plan.first_problem() or ""
    return Suggestion(devices=devices, capacity=capacity, fitting=fitting, candidates=valid, invalid=invalid,
                      seconds=time.perf_counter() - t0, plans=plans)


def _secs(x: float) -> str:
    return f"{x:.1f} s" if x >= 10 else f"{x:.3g} s"


def render_suggestion(s: Suggestion, recipe: str) -> str:
    out = [f"layouts of {recipe} on {s.devices} devices of {gib(s.capacity)}, cheapest first (estimated step: "
           f"mindrl/plan/cost.py, a crude model for ranking)"]
    head = f"  {'layout':<22} {'est. step':>10} {'bubble':>8} {'TP':>8} {'EP':>8} {'DP':>8} {'offload':>8}  " \
           f"{'verdict':<13} detail"
    out.append(head)
    shown = [c for c in s.candidates if c.status in ("fits", "does not fit")]
    for c in shown:
        p = c.cost_parts
        out.append(f"  {c.name:<22} {_secs(c.cost):>10} {_secs(p['bubble']):>8} {_secs(p['tp']):>8} "
                   f"{_secs(p['ep']):>8} {_secs(p['dp']):>8} {_secs(p['offload']):>8}  {c.status:<13} {c.why}")
    pruned = [c for c in s.candidates if c.status == "pruned"]
    later = [c for c in s.candidates if c.status == "not planned"]
    out.append(f"{len(s.candidates)} layouts pass validate() ({sum(s.invalid.values())} refused); {len(pruned)} "
               f"cannot fit by parameter bytes; {len(shown)} planned; {len(later)} costlier ones not planned")
    if s.fitting:
        best = s.fitting[0]
        out.append(f"cheapest that fits: {best.name}: " + " ".join(best.overrides(s.devices)))
    else:
        out.append("no layout fits")
    out.append(f"searched in {s.seconds:.1f} s")
    return "\n".join(out)
