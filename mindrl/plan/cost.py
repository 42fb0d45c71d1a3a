"""The crude step cost `--suggest` ranks layouts by: seconds of one GRPO step's training side per device.

    cost = compute x (1 + bubble) + TP traffic + EP traffic + DP traffic + offload traffic

- compute: the model FLOPs of the step's training passes (`mindrl.models.flops.step_flops` with every
  prompt `max_prompt_length` and every response `max_tokens` long: the update (3 x a forward, per
  epoch), the old log-probs and, with a KL, the reference forward; full recompute adds one more forward
  to the update) / devices / `COST["flops"]`. The same for every layout of one device count; it enters
  the ranking only through the bubble.
- bubble: megatron's pipeline bubble (PP - 1) / (m x v), m = micro-batches per update on a DP rank,
  v = virtual stages.
- TP traffic: per layer of a stage, per token of the DP rank, `h` x dtype bytes in a ring all-reduce
  (2 (TP - 1) / TP of it sent), 2 per forward, 2 per backward (+ 2 for a recompute forward).
- EP traffic: per MoE layer of a stage, per token of the rank (its TP share under SP), `top_k` x `h` x
  dtype bytes in an all-to-all ((EP - 1) / EP of it sent), dispatch + combine: 2 per forward, 2 per
  backward.
- DP traffic: per optimizer update, the rank's fp32 gradients reduce-scattered and the parameters
  gathered: 2 (DP - 1) / DP x 4 bytes x dense parameters, and over expert-DP for expert parameters.
- offload (`offload_train_state`): the fp32 main params and Adam moments of the rank to the host and
  back once a step.
- link: TP, EP or DP traffic runs at `COST["intra_node"]` when its group fits in one node
  (`--devices-per-node`; megatron's rank order tp-ep-dp-pp), else at `COST["inter_node"]`; offload at
  `COST["host"]`.

Not modelled: the rollout (its layout is the recipe's, or follows the actor's TP/EP), overlap of
communication with compute, latency, and load imbalance of MoE routing. The constants are round
figures for a current accelerator, not measurements: the cost ranks layouts, it does not predict a
step time.

May import: mindrl.config, mindrl.models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mindrl.config import MindRLConfig
from mindrl.models.flops import step_flops

COST: dict[str, float] = {
    "flops": 150e12,  # achieved bf16 matmul FLOP/s per device
    "intra_node": 150e9,  # bytes/s per device, inside a node (NVLink / HCCS)
    "inter_node": 20e9,  # bytes/s per device, across nodes (a 200 Gb/s NIC per device)
    "host": 20e9,  # bytes/s per device, device <-> host memory
}


@dataclass
class StageParams:
    """Parameters a rank of one pipeline stage holds (elements): `dense` (replicated over DP) and `expert`
    (the routed experts, over expert-DP), and its decoder layers by kind (0 dense MLP, 1 MoE)."""

    dense: int
    expert: int
    moe_layers: int
    layers: int


def _link(group: int, stride: int, devices_per_node: int) -> float:
    """A group of `group` ranks `stride` apart stays in one node when it spans at most a node."""
    return COST["intra_node"] if group * stride <= devices_per_node else COST["inter_node"]


def step_cost(cfg: MindRLConfig, stages: list[StageParams], *, micro_batches: int, devices_per_node: int,
              dtype_bytes: int, hf: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """(seconds, {part: seconds}) of the stated model (module docstring), for the slowest stage."""
    a, rl, mt, g = cfg.actor_config, cfg.rl_config, cfg.megatron_training, cfg.generate_config
    world = rl.actor_resource.num_npus
    tp, pp, ep = a.tensor_model_parallel_size, a.pipeline_model_parallel_size, a.expert_model_parallel_size
    dp, edp = world // (tp * pp), max(1, world // (tp * pp * ep))
    prompts, n = mt.global_batch_size, rl.n_samples_per_prompt
    prompt, response = rl.max_prompt_length, g.sampling_config.max_tokens
    flops = step_flops(hf, [prompt] * prompts, [[response] * n] * prompts,
                       reference=bool(rl.use_kl_loss or rl.kl_coef), old_log_probs=True, epochs=rl.epochs)
    forward = flops["old_log_probs"]
    train = flops["update"] + flops["reference"] + flops["old_log_probs"] + (forward * rl.epochs if mt.recompute else 0)
    chunks = 1
    if a.num_layers_per_virtual_pipeline_stage:
        chunks = sum(s.layers for s in stages) // (pp * a.num_layers_per_virtual_pipeline_stage)
    bubble = (pp - 1) / (micro_batches * chunks)
    compute = train / world / COST["flops"]
    tokens = prompts * n * (prompt + response)  # every sequence, per step
    forwards = (1 if rl.use_kl_loss or rl.kl_coef else 0) + 1  # reference, old log-probs
    passes = forwards + rl.epochs * (3 if mt.recompute else 2)  # collectives in units of one forward's
    h = int(hf["hidden_size"])
    top_k = int(hf.get("num_experts_per_tok") or 1)
    worst: tuple[float, dict[str, float]] = (-1.0, {})
    for s in stages:
        parts = {"compute": compute, "bubble": compute * bubble}
        per_dp = tokens / dp
        parts["tp"] = (passes * 2 * 2 * (tp - 1) / tp * per_dp * h * dtype_bytes * s.layers
                       / _link(tp, 1, devices_per_node)) if tp > 1 else 0.0
        parts["ep"] = (passes * 2 * (ep - 1) / ep * per_dp / tp * top_k * h * dtype_bytes * s.moe_layers
                       / _link(ep, tp, devices_per_node)) if ep > 1 else 0.0
        updates = max(1, prompts // (rl.mini_batch_size or prompts)) * rl.epochs
        dp_bytes = (2 * (dp - 1) / dp * 4 * s.dense) + (2 * (edp - 1) / edp * 4 * s.expert)
        parts["dp"] = updates * dp_bytes / _link(dp, tp, devices_per_node)
        parts["offload"] = 0.0
        if g.offload_train_state:
            per_param = (4 if mt.bf16 else 0) + 8  # fp32 main params (half-precision training) + Adam moments
            shard = (s.dense / dp + s.expert / edp) if mt.use_distributed_optimizer else s.dense + s.expert
            parts["offload"] = 2 * per_param * shard / COST["host"]
        total = sum(parts.values())
        if total > worst[0]:
            worst = (total, parts)
    return worst
