"""The GRPO trainer. `train(cfg)` runs on every rank (SPMD: actor, reference and rollout share the
ranks); `grpo_step` is one step, read top to bottom.

Data-parallel ranks each take whole prompt groups (global_batch_size / DP prompts), so rewards and
group-relative advantages never need other ranks' samples; only metrics are all-reduced.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from mindrl.algorithms import estimate_kl, group_norm_advantages, masked_mean
from mindrl.config import MindRLConfig
from mindrl.rollout import RolloutRunner, SamplingParams
from mindrl.trainer.tracking import Tracker
from mindrl.workers.actor import PolicyWorker, SequenceBatch, build_sequence_batch

log = logging.getLogger("mindrl")


class TrainingError(RuntimeError):
    pass


@dataclass
class Run:
    """Everything a step needs, built once by `setup`."""

    cfg: MindRLConfig
    actor: PolicyWorker
    reference: PolicyWorker | None
    engine: RolloutRunner
    tokenizer: Any
    dataset: Any
    reward_fn: Any
    tracker: Tracker | None  # rank 0 only
    output_dir: Path
    start_step: int
    expected: dict[str, Any]
    bad_steps_in_a_row: int = 0


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[f"time/{stage}"] = time.perf_counter() - t0


def _dp() -> tuple[int, int]:
    return ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()


def grpo_step(run: Run, step: int) -> dict[str, float]:
    cfg, rl, mt = run.cfg, run.cfg.rl_config, run.cfg.megatron_training
    n = rl.n_samples_per_prompt
    timer = StageTimer()
    dp_rank, dp_size = _dp()

    # 1. This DP rank's prompts (every rank reads the same stream and keeps its slice).
    with timer("data"):
        samples = run.dataset.take(mt.global_batch_size)
        per_rank = len(samples) // dp_size
        mine = samples[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        for s in mine:
            if len(s.prompt_ids) > rl.max_prompt_length:
                raise TrainingError(f"prompt {s.index} has {len(s.prompt_ids)} tokens > rl_config.max_prompt_length="
                                    f"{rl.max_prompt_length}; preprocess with seq_length <= max_prompt_length")
        prompts = [[int(t) for t in s.prompt_ids] for s in mine]

    # 2. Rollout: n samples per prompt, seeded by (seed, step, DP rank) so a resumed run repeats it.
    with timer("rollout"):
        params = SamplingParams.from_config(cfg.generate_config.sampling_config, n=n,
                                            seed=mt.seed * 1_000_003 + step * 1_009 + dp_rank)
        outputs = run.engine.generate(prompts, params)

    # 3. Rewards on the decoded completions.
    with timer("reward"):
        completions = run.tokenizer.batch_decode([o.token_ids for o in outputs], skip_special_tokens=True)
        labels = [mine[o.prompt_index].labels for o in outputs]
        scored = score_on_one_rank(run, completions, labels, [len(o.token_ids) for o in outputs])
        rewards = torch.tensor(scored.total, dtype=torch.float32)

    # 4. Group-relative advantages (GRPO; Dr.GRPO without std normalisation).
    advantages = group_norm_advantages(rewards, n_samples_per_prompt=n, norm_adv_by_std_in_grpo=rl.norm_adv_by_std)
    batch = build_sequence_batch([prompts[o.prompt_index] for o in outputs], [o.token_ids for o in outputs],
                                 advantages)

    # 5. Reference log-probs (the frozen initial policy), and old log-probs when the policy moves
    #    between updates of this rollout (more than one mini-batch or epoch).
    with timer("reference"):
        if run.reference is not None:
            batch.ref_log_probs = run.reference.log_probs(batch)
    updates_per_rollout = rl.epochs * (mt.global_batch_size // (rl.mini_batch_size or mt.global_batch_size))
    with timer("old_log_probs"):
        if updates_per_rollout > 1:
            batch.old_log_probs = run.actor.log_probs(batch)

    # 6. Policy updates: epochs x mini-batches, each one optimizer step over its micro-batches.
    with timer("update"):
        rows_per_mini = (rl.mini_batch_size or mt.global_batch_size) // dp_size * n
        update_metrics: list[dict[str, float]] = []
        for _ in range(rl.epochs):
            for start in range(0, len(batch), rows_per_mini):
                update_metrics.append(run.actor.update(batch.select(slice(start, start + rows_per_mini)), rl))
        run.engine.weights_updated()  # a rollout copy (another layout or engine) is pushed before next generate

    # 7. Metrics (all-reduced over DP ranks).
    metrics = _step_metrics(run, batch, outputs, scored, rewards, update_metrics)
    metrics.update(timer.seconds)
    metrics["time/step"] = sum(timer.seconds.values())
    metrics["throughput/tokens_per_s"] = metrics["response_length/sum"] / max(metrics["time/step"], 1e-9)
    if run.tracker is not None and rl.log_samples_interval and (step - 1) % rl.log_samples_interval == 0:
        run.tracker.log_samples(step, [{"prompt": run.tokenizer.decode(prompts[o.prompt_index]), "completion": c,
                                        "reward": r} for o, c, r in list(zip(outputs, completions, scored.total))[:4]])
    return metrics


def score_on_one_rank(run: Run, completions: list[str], labels: list[dict], lengths: list[int]) -> Any:
    """Rewards are computed once per model-parallel group (its first rank) and broadcast: every TP/PP
    rank of a DP group holds the same samples, and scorer pools need not run on every rank."""
    group = ps.get_model_parallel_group()
    src = dist.get_process_group_ranks(group)[0]
    box = [run.reward_fn(completions, labels, lengths) if dist.get_rank() == src else None]
    if dist.get_world_size(group) > 1:
        dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def _step_metrics(run: Run, batch: SequenceBatch, outputs: list, scored: Any, rewards: torch.Tensor,
                  update_metrics: list[dict[str, float]]) -> dict[str, float]:
    lengths = torch.tensor([len(o.token_ids) for o in outputs], dtype=torch.float32)
    clipped = torch.tensor([o.finish_reason == "length" for o in outputs], dtype=torch.float32)
    kl = torch.zeros(())
    if batch.ref_log_probs is not None:
        logp = batch.old_log_probs if batch.old_log_probs is not None else None
        if logp is None:  # one update per rollout: the rollout's own log-probs are the policy's
            logp = torch.zeros_like(batch.ref_log_probs)
            for i, o in enumerate(outputs):
                logp[i, batch.response_mask[i]] = torch.tensor(o.logprobs, dtype=torch.float32)
        kl = masked_mean(estimate_kl(logp, batch.ref_log_probs, run.cfg.rl_config.kl_penalty), batch.response_mask)
    n = run.cfg.rl_config.n_samples_per_prompt
    groups = rewards.view(-1, n)
    flat_groups = (groups.max(dim=1).values == groups.min(dim=1).values).sum().float()  # no learning signal
    sums = {"reward": rewards.sum(), "reward_sq": (rewards ** 2).sum(), "count": torch.tensor(float(len(rewards))),
            "groups": torch.tensor(float(groups.shape[0])), "flat_groups": flat_groups,
            "length": lengths.sum(), "clipped": clipped.sum(), "kl": kl * len(rewards),
            "timeouts": torch.tensor(float(scored.metrics.get("reward/timeouts", 0))),
            "errors": torch.tensor(float(scored.metrics.get("reward/errors", 0)))}
    for name, values in scored.parts.items():
        sums[f"part/{name}"] = torch.tensor(float(sum(values)))
    keys = sorted(sums)
    packed = torch.stack([sums[k].float() for k in keys])
    tp_pp = ps.get_tensor_model_parallel_world_size() * ps.get_pipeline_model_parallel_world_size()
    dist.all_reduce(packed)
    packed /= tp_pp  # every model-parallel rank of a DP group holds the same samples
    total = dict(zip(keys, packed.tolist()))
    count = max(total["count"], 1.0)
    lmax = torch.tensor([lengths.max().item() if len(lengths) else 0.0])
    dist.all_reduce(lmax, op=dist.ReduceOp.MAX)
    metrics = {
        "reward/mean": total["reward"] / count,
        "reward/std": max(total["reward_sq"] / count - (total["reward"] / count) ** 2, 0.0) ** 0.5,
        "response_length/mean": total["length"] / count,
        "response_length/max": lmax.item(),
        "response_length/clip_ratio": total["clipped"] / count,
        "response_length/sum": total["length"],
        "kl": total["kl"] / count,
        "reward/timeouts": total["timeouts"],
        "reward/errors": total["errors"],
        # Groups whose samples all scored the same get zero advantage: a high fraction means the
        # task is too easy or too hard for the policy (DAPO's dynamic sampling filters them).
        "reward/flat_group_fraction": total["flat_groups"] / max(total["groups"], 1.0),
    }
    for key in keys:
        if key.startswith("part/"):
            metrics[f"reward/{key[5:]}/mean"] = total[key] / count
    acc_names = [k for k in keys if k.startswith("part/") and ("acc" in k or k[5:] in ("countdown", "gsm8k", "math23k"))]
    if acc_names:
        metrics["accuracy"] = total[acc_names[0]] / count
    for key in update_metrics[0] if update_metrics else {}:
        metrics[key] = sum(m[key] for m in update_metrics) / len(update_metrics)
    metrics["actor/lr"] = run.actor.model.optimizer.param_groups[0]["lr"]
    return metrics
