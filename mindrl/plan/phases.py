"""A GRPO job's per-device memory, phase by phase: `plan_job(cfg, capacity)`.

Every pipeline stage's first rank is built and measured (`ranks.train_rank`; TP, EP and DP ranks of
one stage hold the same shapes), plus one rollout rank in the rollout's own layout
(`ranks.rollout_rank`). The phases follow one GRPO step on a rank (mindrl/trainer/grpo.py,
mindrl/rollout/runner.py):

- rollout: the training state stays (unless `offload_train_state` moved the optimizer state and
  main params to the host and freed the grad buffers), plus the rollout's weights and KV cache —
  for vLLM its `gpu_memory_utilization` share of the device (weights + KV cache + its buffers); for the
  built-in engine on packed linears (`packed_linear`; unset on the cpu backend) the packed weight copy;
- weight push (a rollout with its own weights): the rollout engine's weights are awake, the push
  gathers one bucket of full tensors and its send/receive arena;
- reference forward: the actor's old log-probs and the reference's, forward only;
- training: one update: the micro-batches a pipeline stage holds in flight (1F1B: PP - stage;
  interleaved: megatron's warm-up count) each keep their `held` activations, one is at its `peak`.

Rows name what they count; `in_peak=False` rows are shown for information (already inside another
row, or on the host). A phase fits when its peak is at most the capacity.

May import: torch, mindrl.config, mindrl.plan.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from mindrl.config import MindRLConfig
from mindrl.plan.ranks import (RolloutRank, TrainRank, packs_linears, rollout_rank, shares_weights, train_rank,
                               uses_reference)
from mindrl.plan.world import first_rank_of_stage

MiB = 1024 ** 2


@dataclass
class Row:
    name: str
    bytes: int
    note: str = ""
    in_peak: bool = True


@dataclass
class Phase:
    name: str
    rows: list[Row]
    capacity: int | None = None
    peak: int = 0
    fits: bool | None = None
    headroom: int | None = None
    problem: str = ""  # a reason it cannot work besides the peak (e.g. vLLM has no room for one sequence)

    def settle(self) -> "Phase":
        self.peak = sum(r.bytes for r in self.rows if r.in_peak)
        if self.capacity is not None:
            self.headroom = self.capacity - self.peak
            self.fits = self.headroom >= 0 and not self.problem
        return self


@dataclass
class RankPlan:
    label: str
    rank: int
    stage: int
    params: int
    phases: list[Phase]

    @property
    def peak(self) -> int:
        return max(p.peak for p in self.phases)


@dataclass
class JobPlan:
    recipe: str
    world: int
    layout: dict[str, Any]
    capacity: int | None
    device: str | None
    ranks: list[RankPlan]
    host_per_node: list[Row]
    devices_per_node: int
    # Every pipeline stage's first rank: {stage, rank, params, weights, grads, main_params, optimizer} (bytes).
    stages: list[dict[str, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def fits(self) -> bool | None:
        states = [p.fits for r in self.ranks for p in r.phases]
        return None if any(s is None for s in states) else all(states)

    def first_problem(self) -> str | None:
        """'phase: row ...' of the first phase that does not fit, for validate()'s message."""
        for r in self.ranks:
            for p in r.phases:
                if p.fits is False:
                    top = max((row for row in p.rows if row.in_peak), key=lambda row: row.bytes)
                    why = p.problem or (f"peak {gib(p.peak)} > capacity {gib(p.capacity)}; largest row "
                                        f"'{top.name}' {gib(top.bytes)}")
                    return f"{r.label}, phase '{p.name}': {why}"
        return None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits, "problem": self.first_problem()}


def gib(n: int | None) -> str:
    """Bytes for people: GiB from 1 GiB up, MiB below (negative headrooms keep their sign)."""
    if n is None:
        return "?"
    return f"{n / 1024 ** 3:.2f} GiB" if abs(n) >= 1024 ** 3 else f"{n / 1024 ** 2:.2f} MiB"


def micro_batch_shape(cfg: MindRLConfig) -> tuple[int, int, int]:
    """(rows, seq, response) of the largest training micro-batch: micro_batch_size rows of seq_length
    tokens (token budgets: one packed row of max_tokens_per_micro_batch), rounded up to TP under SP."""
    a, mt = cfg.actor_config, cfg.megatron_training
    rows, seq = a.micro_batch_size, mt.seq_length
    if a.max_tokens_per_micro_batch:
        rows, seq = 1, a.max_tokens_per_micro_batch
    tp = a.tensor_model_parallel_size
    seq = -(-seq // tp) * tp
    response = min(seq, cfg.generate_config.sampling_config.max_tokens)
    return rows, seq, response


def micro_batches_per_update(cfg: MindRLConfig) -> int:
    a, rl, mt = cfg.actor_config, cfg.rl_config, cfg.megatron_training
    dp = max(1, rl.actor_resource.num_npus // (a.tensor_model_parallel_size * a.pipeline_model_parallel_size))
    mini = rl.mini_batch_size or mt.global_batch_size
    return max(1, mini * rl.n_samples_per_prompt // (a.micro_batch_size * dp))


def in_flight(stage: int, pp: int, chunks: int, micro_batches: int) -> int:
    """Micro-batch chunks whose activations a stage holds at once in megatron's schedules: 1F1B warms up
    PP - stage - 1 forwards before its first backward; the interleaved schedule (PP - stage - 1) x 2 +
    (chunks - 1) x PP (megatron.core.pipeline_parallel.schedules, get_pp_rank_microbatches)."""
    if pp == 1:
        return 1
    warmup = (pp - stage - 1) * 2 + (chunks - 1) * pp if chunks > 1 else pp - stage - 1
    return min(warmup + 1, micro_batches * chunks)


def _rank_phases(cfg: MindRLConfig, tr: TrainRank, ro: RolloutRank | None, capacity: int | None,
                 micro_batches: int) -> list[Phase]:
    g = cfg.generate_config
    s = tr.states
    pp, chunks = cfg.actor_config.pipeline_model_parallel_size, len(tr.chunk_layers)
    shared = shares_weights(cfg)
    offload = g.offload_train_state and not shared
    builtin_copy = g.engine == "builtin" and not shared
    ref = [Row("reference model (frozen, training dtype)", tr.reference_bytes)] if tr.reference_bytes else []
    state = [Row("weights (parameters, training dtype)", s.weights),
             Row("grads (DDP fp32 buffers)", s.grads),
             Row("fp32 main params (optimizer's copy)", s.main_params),
             Row("optimizer states (Adam moments)", s.optimizer)]
    copy = [Row("rollout copy weights (built-in, own layout)", ro.weight_bytes)] if builtin_copy and ro else []
    k = in_flight(tr.stage, pp, chunks, micro_batches)
    held = max((a.held for a in tr.train_act), default=0)
    peak = max((a.peak for a in tr.train_act), default=0)
    act = Row(f"activations ({k} micro-batch{'es' if k > 1 else ''} in flight)", (k - 1) * held + peak,
              f"{k - 1} x {gib(held)} held + {gib(peak)} peak of one (measured)")
    logprob = [Row("fused log-prob chunk (3 fp32 chunk-sized temporaries)", tr.logprob_chunk,
                   "inside the activations above", in_peak=False)] if tr.logprob_chunk else []
    phases = [Phase("training", state + ref + copy + [act] + logprob, capacity)]
    fwd = max((a.peak for a in tr.forward_act), default=0)
    phases.append(Phase("reference forward", state + ref + copy + [
        Row("activations (forward only, one micro-batch)", fwd)], capacity))
    moved = s.main_params + s.optimizer
    kept = state if not offload else [state[0], Row("grads (freed: offload_train_state)", 0),
                                      Row("fp32 main params (on host)", 0), Row("optimizer states (on host)", 0)]
    host = [Row("offloaded to host (offload_train_state)", moved, "main params + Adam moments", in_peak=False)] \
        if offload else []
    if not shared and ro is not None:
        bucket = int(g.weight_bucket_mb * MiB)
        push = [Row("push buckets", 2 * bucket, f"one {g.weight_bucket_mb:g} MiB bucket of full tensors + its "
                    f"send/receive arena (a bucket closes after the tensor that crosses the size)")]
        phases.append(Phase("weight push", kept + ref + [Row(f"rollout weights ({g.engine}, TP{ro.tp} EP{ro.ep})",
                                                             ro.weight_bytes)] + push + host, capacity))
    tokens = g.max_num_seqs * g.max_model_len
    kv_need = tokens * (ro.kv_bytes_per_token if ro else 0)
    rollout_rows = kept + ref + copy
    problem = ""
    if g.engine == "vllm" and ro is not None:
        if capacity is not None:
            share = int(g.gpu_memory_utilization * capacity)
            kv = share - ro.weight_bytes
            one_seq = g.max_model_len * ro.kv_bytes_per_token
            rollout_rows += [Row(f"rollout weights (vLLM, TP{ro.tp} EP{ro.ep})", ro.weight_bytes),
                             Row("KV cache (the rest of vLLM's share)", max(kv, 0),
                                 f"gpu_memory_utilization {g.gpu_memory_utilization:g} x capacity = {gib(share)}; "
                                 f"{g.max_num_seqs} x {g.max_model_len} tokens need {gib(kv_need)}")]
            if kv < one_seq:
                problem = (f"vLLM's share ({gib(share)}) minus its weights ({gib(ro.weight_bytes)}) leaves "
                           f"{gib(kv)} for KV cache, less than one {g.max_model_len}-token sequence ({gib(one_seq)})")
        else:
            rollout_rows += [Row(f"rollout weights (vLLM, TP{ro.tp} EP{ro.ep})", ro.weight_bytes),
                             Row(f"KV cache ({g.max_num_seqs} x {g.max_model_len} tokens)", kv_need)]
    else:
        if shared:
            rollout_rows.append(Row("rollout weights", 0, "shared with the actor"))
        rollout_rows.append(Row(f"KV cache ({g.max_num_seqs} x {g.max_model_len} tokens, built-in)",
                                g.max_num_seqs * g.max_model_len * (ro.kv_bytes_per_token if ro else 0)))
        if ro is not None and packs_linears(cfg):
            rollout_rows.append(Row("packed linear weights (packed_linear)", ro.linear_bytes,
                                    "a copy of every linear's weight, packed once per generate call"))
    phases.append(Phase("rollout", rollout_rows + host, capacity, problem=problem))
    return [p.settle() for p in phases]


def stage_signatures(cfg: MindRLConfig) -> list[Any]:
    """Per pipeline stage, what decides its modules: first / last stage, and the kind (dense or MoE) of each
    of its layers, from megatron's own `moe_layer_freq` of the planned config. Equal signatures build equal
    modules, so the planner builds one. None (never shared) with virtual stages."""
    from mindrl.plan.ranks import train_plan

    plan = train_plan(cfg)
    c, layout = plan.config, plan.layout
    if c.virtual_pipeline_model_parallel_size:
        return [None] * layout.pp
    n = c.num_layers
    freq = c.moe_layer_freq
    if not c.num_moe_experts:
        pattern = [0] * n
    elif isinstance(freq, int):
        pattern = [1 if i % freq == 0 else 0 for i in range(n)]
    else:
        pattern = list(freq)
    layers = layout.stage_layers(n)  # the layout's one plan of which layers each stage holds
    return [(s == 0, s == layout.pp - 1, tuple(pattern[g] for g in layers[(s, 0)])) for s in range(layout.pp)]


def plan_job(cfg: MindRLConfig, *, capacity: int | None = None, device: str | None = None,
             devices_per_node: int | None = None, recipe: str = "", activations: bool = True,
             all_ranks: bool = False, cache: dict | None = None, built: dict | None = None,
             rollout: RolloutRank | None = None) -> JobPlan:
    """Build every pipeline stage's first rank and one rollout rank, and lay out the phases.
    `all_ranks`: also count the states of every rank of the world (`JobPlan.stages` then lists each;
    ranks of a stage differ only by the distributed optimizer's shard, whose parameters fall
    differently around the buffer's alignment padding).
    For a caller planning many variants (`suggest.py`): `cache`, the activation runs, and `built`, the stage
    builds by `stage_signatures`, are each valid for one training layout and world (a layer kind's increment
    is taken from the first stage holding two of it: runs reused across PPs change the plan a little);
    `rollout`, the rollout rank (one rollout layout)."""
    t0 = time.perf_counter()
    a = cfg.actor_config
    world, pp = cfg.rl_config.actor_resource.num_npus, a.pipeline_model_parallel_size
    rows, seq, response = micro_batch_shape(cfg)
    mbs = micro_batches_per_update(cfg)
    cache = {} if cache is None else cache  # activation runs shared by stages of the same kinds of layers
    built = {} if built is None else built
    trains = []
    for s, sig in enumerate(stage_signatures(cfg)):
        if sig is not None and sig in built:  # the same modules as an earlier stage: same bytes
            trains.append(dataclasses.replace(built[sig], stage=s, rank=first_rank_of_stage(s, world, pp)))
            continue
        trains.append(train_rank(cfg, s, rows=rows, seq=seq, response=response, activations=activations,
                                 cache=cache))
        built[sig] = trains[-1]
    ro = rollout if rollout is not None else rollout_rank(cfg)
    ranks = []
    for tr in trains:
        ranks.append(RankPlan(label=f"rank {tr.rank} (stage {tr.stage})", rank=tr.rank, stage=tr.stage,
                              params=tr.states.num_params, phases=_rank_phases(cfg, tr, ro, capacity, mbs)))
    first = ranks[0]
    heaviest = max(ranks, key=lambda r: r.peak)
    first.label = f"first rank: {first.label}"
    chosen = [first]
    if heaviest is not first:
        heaviest.label = f"heaviest rank: {heaviest.label}"
        chosen.append(heaviest)
    else:
        first.label += ", also the heaviest"
    dpn = devices_per_node or min(world, 8)
    g = cfg.generate_config
    host = []
    if g.offload_train_state and not shares_weights(cfg):
        s = max(trains, key=lambda t: t.states.main_params + t.states.optimizer).states
        host.append(Row(f"offloaded training state x {dpn} devices", dpn * (s.main_params + s.optimizer)))
    if g.engine == "vllm":
        host.append(Row(f"vLLM weights asleep (sleep level 1) x {dpn} devices", dpn * ro.weight_bytes))
    mt = cfg.megatron_training
    paths = (("megatron_training.tokenizer_name_or_path", mt.tokenizer_name_or_path),
             ("megatron_training.data_path", mt.data_path), ("actor_config.load", a.load))
    warnings = [f"{key}: '{value}' does not exist yet (planning needs only the recipe and the model's config)"
                for key, value in paths if value and not _exists(value)]
    layout = {"tp": a.tensor_model_parallel_size, "pp": pp, "ep": a.expert_model_parallel_size,
              "vpp_chunks": len(trains[0].chunk_layers), "dp": world // (a.tensor_model_parallel_size * pp),
              "micro_batch": [rows, seq], "micro_batches_per_update": mbs, "reference": uses_reference(cfg),
              "rollout": {"engine": g.engine, "tp": ro.tp, "ep": ro.ep, "shared": shares_weights(cfg)}}
    listed = trains
    if all_ranks:
        listed = [train_rank(cfg, 0, rank=r, activations=False) for r in range(world)]
    stages = [{"stage": t.stage, "rank": t.rank, "params": t.states.num_params, "weights": t.states.weights,
               "grads": t.states.grads, "main_params": t.states.main_params, "optimizer": t.states.optimizer}
              for t in listed]
    return JobPlan(recipe=recipe, world=world, layout=layout, capacity=capacity, device=device, ranks=chosen,
                   host_per_node=host, devices_per_node=dpn, stages=stages, warnings=warnings,
                   seconds=time.perf_counter() - t0)


def _exists(path: str) -> bool:
    import glob
    from pathlib import Path

    return Path(path).expanduser().exists() or bool(glob.glob(str(Path(path).expanduser()) + "*"))
