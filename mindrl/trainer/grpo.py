"""The GRPO trainer. `train(cfg)` runs on every rank (SPMD: actor, reference and rollout share the
ranks); `grpo_step` is one step, read top to bottom.

Data-parallel ranks each take whole prompt groups (global_batch_size / DP prompts), so rewards and
group-relative advantages never need other ranks' samples; only metrics are all-reduced.

DAPO dynamic sampling (`rl_config.filter_groups`) repeats generate_round (each round reads the next
global_batch_size prompts of the stream and is seeded by its round index) and keeps the groups whose metric
varies. DP ranks keep different numbers; they stay in step by all-reducing the smallest kept count after every
round: all ranks stop together (when every rank has its global_batch_size / DP groups, or at
max_num_gen_batches rounds) and each trains on that common number of groups, trimmed so mini-batches and
micro-batches stay whole (trainable_groups). The stream advances by whole rounds, a deterministic function of
the seeds and weights, so `consumed_samples` in a checkpoint resumes exactly.

Batch-level advantage statistics (REINFORCE++ whitening) are those of the whole batch: their sums are
all-reduced over the DP group (`dp_sum`), so DP=2 gives the advantages of DP=1.
"""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from mindrl.algorithms import (AdaptiveKLController, DynamicSamplingBuffer, FixedKLController, apply_kl_penalty,
                               estimate_kl, filter_groups, get_advantage_estimator, logprob_diff_stats, masked_mean,
                               overlong_filter_mask, scores_on_last_token)
from mindrl.config import MindRLConfig
from mindrl.rollout import RolloutRunner, SamplingParams
from mindrl.trainer.perf import perf_metrics
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
    kl_ctrl: Any = None  # the in-reward KL coefficient's controller (use_kl_in_reward); saved in checkpoints


class StageTimer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        key = f"time/{stage}"  # summed: dynamic sampling enters rollout and reward once per round
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0


def _dp() -> tuple[int, int]:
    return ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()


def rollout_seed(seed: int, step: int, round_index: int) -> int:
    """The sampling seed of one generation round: distinct per (seed, step, round), the same on a resumed
    run and on every rank. Samples are keyed by (this seed, the prompt's index in the round's global
    batch, sample index), so they do not depend on the data-parallel or rollout layout. Round 0 keeps
    the pre-dynamic-sampling seed (of DP rank 0); later rounds move by 2^40."""
    return seed * 1_000_003 + step * 1_009 + round_index * (1 << 40)


@dataclass
class Group:
    """One prompt's n samples from one generation round, scored."""

    prompt: list[int]
    labels: dict
    outputs: list  # n RolloutOutputs
    completions: list[str]
    totals: list[float]  # weighted reward per sample
    parts: dict[str, list[float]]  # per scorer, per sample

    def metric(self, name: str) -> list[float]:
        return self.totals if name == "reward" else self.parts[name]


def generate_round(run: Run, step: int, round_index: int, timer: "StageTimer | None" = None
                   ) -> tuple[list[Group], dict[str, float]]:
    """One generation round on this DP rank: take global_batch_size prompts from the stream (every rank
    reads the same stream and keeps its slice), generate n samples each with one `engine.generate` call,
    and score them. Returns the groups and the scorer's counters (timeouts, errors)."""
    cfg, rl, mt = run.cfg, run.cfg.rl_config, run.cfg.megatron_training
    dp_rank, dp_size = _dp()
    timer = timer or StageTimer()
    with timer("data"):
        samples = run.dataset.take(mt.global_batch_size)
        per_rank = len(samples) // dp_size
        mine = samples[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        for s in mine:
            if len(s.prompt_ids) > rl.max_prompt_length:
                raise TrainingError(f"prompt {s.index} has {len(s.prompt_ids)} tokens > rl_config.max_prompt_length="
                                    f"{rl.max_prompt_length}; preprocess with seq_length <= max_prompt_length")
        prompts = [[int(t) for t in s.prompt_ids] for s in mine]
        keys = [dp_rank * per_rank + i for i in range(len(mine))]  # each prompt's index in the round's batch
    with timer("rollout"):
        params = SamplingParams.from_config(cfg.generate_config.sampling_config, n=rl.n_samples_per_prompt,
                                            seed=rollout_seed(mt.seed, step, round_index))
        outputs = run.engine.generate(prompts, params, prompt_keys=keys)
    with timer("reward"):
        completions = run.tokenizer.batch_decode([o.token_ids for o in outputs], skip_special_tokens=True)
        labels = [mine[o.prompt_index].labels for o in outputs]
        scored = score_on_one_rank(run, completions, labels, [len(o.token_ids) for o in outputs])
    groups = []
    for i, s in enumerate(mine):
        rows = [j for j, o in enumerate(outputs) if o.prompt_index == i]
        groups.append(Group(prompts[i], s.labels, [outputs[j] for j in rows], [completions[j] for j in rows],
                            [float(scored.total[j]) for j in rows],
                            {name: [float(v[j]) for j in rows] for name, v in scored.parts.items()}))
    counters = {k: float(scored.metrics.get(f"reward/{k}", 0)) for k in ("timeouts", "errors")}
    return groups, counters


def collect_groups(make_round: Callable[[int], list[Group]], keep: Callable[[list[Group]], list[bool]],
                   target: int, max_rounds: int, min_over_dp: Callable[[int], int]
                   ) -> tuple[list[Group], list[Group], int, int]:
    """DAPO dynamic sampling on one DP rank: run rounds (0, 1, ...) until *every* DP rank holds `target`
    informative groups or `max_rounds` rounds ran, then return (the first `common` kept groups, every
    generated group, rounds, groups kept in all rounds), where `common` = the smallest kept count over DP
    ranks, capped at `target`.

    DP ranks stay in step: the stop test uses the all-reduced minimum, so every rank runs the same number
    of rounds (generation may be collective) and trains on the same number of groups (surplus kept groups
    are dropped, as DAPO drops them past the batch size)."""
    buf: DynamicSamplingBuffer[Group] = DynamicSamplingBuffer(target, max_rounds)
    generated: list[Group] = []
    while True:
        groups = make_round(buf.num_rounds)
        generated += groups
        buf.add(groups, keep(groups))
        common = min(min_over_dp(len(buf.groups)), target)
        if common >= target or buf.num_rounds >= max_rounds:
            break
    rounds, kept = buf.num_rounds, len(buf.groups)
    return buf.take(limit=common), generated, rounds, kept


def trainable_groups(num_groups: int, n: int, num_mini_batches: int, micro_batch_size: int,
                     max_tokens_per_micro_batch: int | None = None) -> int:
    """The most groups <= num_groups that split into `num_mini_batches` equal mini-batches whose rows
    (groups x n) divide into whole micro-batches. A full batch always qualifies (validate() checks it).
    With token-budget micro-batches (`max_tokens_per_micro_batch`) any number of rows makes whole
    micro-batches, so only the mini-batches must be equal: micro_batch_size does not trim."""
    per_mini = 1 if max_tokens_per_micro_batch is not None else micro_batch_size // math.gcd(n, micro_batch_size)
    unit = num_mini_batches * per_mini
    return num_groups // unit * unit


def grpo_step(run: Run, step: int) -> dict[str, float]:
    cfg, rl, mt = run.cfg, run.cfg.rl_config, run.cfg.megatron_training
    n = rl.n_samples_per_prompt
    timer = StageTimer()
    _, dp_size = _dp()
    target = mt.global_batch_size // dp_size
    fg = rl.filter_groups
    counters = {"timeouts": 0.0, "errors": 0.0}
    pushes = run.engine.pushes  # a rollout copy pushes the weights inside its first generate of the step

    # 1-3. Prompts, rollout (n samples per prompt) and rewards, one round or (dynamic sampling) several.
    def make_round(round_index: int) -> list[Group]:
        groups, c = generate_round(run, step, round_index, timer)
        for k, v in c.items():
            counters[k] += v
        return groups

    def keep(groups: list[Group]) -> list[bool]:
        if not fg.enable:
            return [True] * len(groups)
        metric = torch.tensor([v for g in groups for v in g.metric(fg.metric)], dtype=torch.float64)
        return filter_groups(metric, n_samples_per_prompt=n).tolist()

    def min_over_dp(count: int) -> int:
        box = torch.tensor([count], dtype=torch.long)
        dist.all_reduce(box, op=dist.ReduceOp.MIN, group=ps.get_data_parallel_group())
        return int(box.item())

    groups, generated, rounds, kept = collect_groups(make_round, keep, target,
                                                     fg.max_num_gen_batches if fg.enable else 1, min_over_dp)
    num_mini = mt.global_batch_size // (rl.mini_batch_size or mt.global_batch_size)
    found = len(groups)
    groups = groups[:trainable_groups(found, n, num_mini, cfg.actor_config.micro_batch_size,
                                      cfg.actor_config.max_tokens_per_micro_batch)]
    if fg.enable and len(groups) < target:
        log.warning(f"step {step}: dynamic sampling found {found}/{target} informative prompt groups per data-parallel "
                    f"rank in {rounds} rounds (filter_groups.max_num_gen_batches={fg.max_num_gen_batches}); training "
                    f"on a partial batch of {len(groups)} groups per rank (whole mini- and micro-batches)")
    outputs = [o for g in groups for o in g.outputs]

    batch, update_metrics, kl_penalty, diff_metrics = None, [], None, {}
    if groups:
        batch = build_sequence_batch([g.prompt for g in groups for _ in g.outputs], [o.token_ids for o in outputs],
                                     torch.zeros(len(outputs)))
        if batch.tokens.shape[1] > mt.seq_length:  # validate() bounds prompt + max_tokens; an engine may not
            raise TrainingError(f"step {step}: a prompt + response of {batch.tokens.shape[1]} tokens exceeds "
                                f"megatron_training.seq_length={mt.seq_length}")
        batch.rollout_log_probs = _rollout_log_probs(batch, outputs)

        # 4. Reference log-probs (the frozen initial policy), and old log-probs when the policy moves
        #    between updates of this rollout (more than one mini-batch or epoch).
        with timer("reference"):
            if run.reference is not None:
                batch.ref_log_probs = run.reference.log_probs(batch)
        with timer("old_log_probs"):
            if rl.epochs * num_mini > 1:
                batch.old_log_probs = run.actor.log_probs(batch)

        # 5. Advantages (rl_config.adv_estimator), from the scores (+ the KL penalty when it is in the reward).
        batch.advantages, kl_penalty = _advantages(run, batch, torch.tensor([t for g in groups for t in g.totals]))
        if rl.overlong_filter:  # after the advantages: truncated samples still count in their group's baseline
            batch.response_mask = overlong_filter_mask(batch.response_mask, [o.finish_reason for o in outputs])
        if batch.old_log_probs is not None:  # else the first update's forward measures it (PolicyWorker.update)
            diff_metrics = logprob_diff_metrics(batch.old_log_probs, batch.rollout_log_probs, batch.response_mask)

        # 6. Policy updates: epochs x mini-batches, each one optimizer step over its micro-batches.
        with timer("update"):
            rows_per_mini = len(batch) // num_mini
            max_tokens = cfg.generate_config.sampling_config.max_tokens
            for _ in range(rl.epochs):
                for start in range(0, len(batch), rows_per_mini):
                    update_metrics.append(run.actor.update(batch.select(slice(start, start + rows_per_mini)), rl,
                                                           max_response_length=max_tokens))
            run.engine.weights_updated()  # a rollout copy (another layout or engine) is pushed before next generate
        measured = [{k: m.pop(k) for k in DIFF_KEYS} for m in update_metrics]
        diff_metrics = diff_metrics or measured[0]  # the first update's forward precedes every optimizer step

    # 7. Metrics (all-reduced over DP ranks): rewards over every generated sample, KL over the trained ones.
    metrics = _step_metrics(run, batch, generated, counters, update_metrics, kl_penalty)
    metrics.update(diff_metrics)
    metrics.update(_filter_metrics(len(generated), kept, len(groups), rounds, target) if fg.enable else {})
    if run.kl_ctrl is not None:
        metrics["kl_ctrl/beta"] = run.kl_ctrl.value  # after this step's update: the next step's beta
    metrics.update(timer.seconds)
    metrics["time/step"] = sum(timer.seconds.values())
    metrics.update(push_metrics(run.engine, pushes))
    metrics["throughput/tokens_per_s"] = metrics["response_length/sum"] / max(metrics["time/step"], 1e-9)
    metrics.update(perf_metrics(run, generated, groups, metrics, old_log_probs=rl.epochs * num_mini > 1))
    if run.tracker is not None and rl.log_samples_interval and (step - 1) % rl.log_samples_interval == 0:
        run.tracker.log_samples(step, [{"prompt": run.tokenizer.decode(g.prompt), "completion": c, "reward": r}
                                       for g in generated[:1] for c, r in list(zip(g.completions, g.totals))[:4]])
    return metrics


def push_metrics(engine: RolloutRunner, pushes_before: int) -> dict[str, float]:
    """The step's train -> rollout weight push, when there was one (never when the rollout shares the
    actor's weights): seconds (part of time/rollout, so not added to time/step again), GB/s and the bytes
    sent; with LoRA adapter pushes (actor_config.lora.merge=false) also the adapters' part of those bytes,
    so a run shows that only the adapters went over after the first push (the base goes once)."""
    if engine.pushes == pushes_before or not engine.last_push:
        return {}
    seconds, nbytes = engine.last_push["seconds"], engine.last_push["bytes"]
    out = {"time/weight_push": seconds, "throughput/weight_push_gb_per_s": nbytes / 1e9 / max(seconds, 1e-9),
           "rollout/weight_push_bytes": nbytes}
    if "adapter_bytes" in engine.last_push:
        out["rollout/weight_push_adapter_bytes"] = engine.last_push["adapter_bytes"]
    return out


DIFF_KEYS = ("rollout/logprob_diff_mean", "rollout/logprob_diff_max")


def logprob_diff_metrics(train_log_probs: torch.Tensor, rollout_log_probs: torch.Tensor,
                         response_mask: torch.Tensor) -> dict[str, float]:
    """|training log-prob - rollout engine's log-prob| over the trained response tokens of every DP rank:
    rollout/logprob_diff_mean (token mean) and rollout/logprob_diff_max. Collective over the DP group."""
    stats = logprob_diff_stats(train_log_probs, rollout_log_probs, response_mask)
    packed = torch.stack([stats["sum"], stats["count"]]).to(torch.float64)
    dist.all_reduce(packed, group=ps.get_data_parallel_group())
    top = stats["max"].reshape(1).clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=ps.get_data_parallel_group())
    return {DIFF_KEYS[0]: (packed[0] / packed[1].clamp(min=1.0)).item(), DIFF_KEYS[1]: top.item()}


def _rollout_log_probs(batch: SequenceBatch, outputs: list) -> torch.Tensor:
    """The rollout engine's per-token log-probs in the batch's label space [N, L-1] (0 off the response)."""
    logp = torch.zeros(batch.response_mask.shape, dtype=torch.float32)
    for i, o in enumerate(outputs):
        logp[i, batch.response_mask[i]] = torch.tensor(o.logprobs, dtype=torch.float32)
    return logp


def build_kl_controller(rl: Any, value: float | None = None) -> FixedKLController | AdaptiveKLController:
    """rl_config.kl_ctrl's controller, starting at `value` (a resumed run's beta) or kl_coef."""
    beta = rl.kl_coef if value is None else value
    if rl.kl_ctrl.type == "adaptive":
        return AdaptiveKLController(beta, rl.kl_ctrl.target_kl, rl.kl_ctrl.horizon)
    return FixedKLController(beta)


def trainer_state(run: Run) -> dict[str, Any]:
    """What a checkpoint must hold beyond weights and data position for an exact resume."""
    return {"kl_coef": run.kl_ctrl.value} if run.kl_ctrl is not None else {}


def restore_trainer_state(run: Run, ckpt_dir: Path) -> None:
    """Undo `trainer_state` from a checkpoint's trainer_state.json (the adaptive KL coefficient)."""
    state = json.loads((ckpt_dir / "trainer_state.json").read_text())
    if run.cfg.rl_config.use_kl_in_reward and "kl_coef" in state:
        run.kl_ctrl = build_kl_controller(run.cfg.rl_config, state["kl_coef"])


def _advantages(run: Run, batch: SequenceBatch, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """([N, L-1] advantages from ADVANTAGE_ESTIMATORS[adv_estimator], [N] KL penalty or None). With
    use_kl_in_reward the token-level reward is the score on the last token minus beta * KL(behaviour ||
    reference) per token, beta from the KL controller, which then updates on the batch's KL (averaged over DP
    ranks, so every rank agrees); the penalty is what that took off each sequence's reward, for the metrics."""
    rl = run.cfg.rl_config
    rewards: torch.Tensor = scores
    penalty = None
    if rl.use_kl_in_reward:
        if run.kl_ctrl is None:
            run.kl_ctrl = build_kl_controller(rl)
        behaviour = batch.old_log_probs if batch.old_log_probs is not None else batch.rollout_log_probs
        rewards, current_kl = apply_kl_penalty(scores_on_last_token(scores, batch.response_mask), behaviour,
                                               batch.ref_log_probs, batch.response_mask, run.kl_ctrl.value,
                                               rl.kl_penalty)
        packed = torch.tensor([float(current_kl), float(len(batch))], dtype=torch.float64)
        dist.all_reduce(packed, group=ps.get_data_parallel_group())
        run.kl_ctrl.update(packed[0].item() / ps.get_data_parallel_world_size(), n_steps=int(packed[1].item()))
        penalty = scores.float() - torch.where(batch.response_mask, rewards, torch.zeros_like(rewards)).sum(-1)
    return estimate_advantages(rl, rewards, batch.response_mask), penalty


def dp_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over the data-parallel group (fp64 on the wire): the estimators' `batch_sum`."""
    total = t.detach().to(torch.float64).clone()
    dist.all_reduce(total, group=ps.get_data_parallel_group())
    return total.to(t.dtype)


def estimate_advantages(rl: Any, rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """ADVANTAGE_ESTIMATORS[rl.adv_estimator] on this rank's rows ([N] scores or [N, L-1] token-level
    rewards): group statistics from the rank's own groups, batch statistics (whitening) over every DP rank."""
    adv, _ = get_advantage_estimator(rl.adv_estimator)(rewards, response_mask,
                                                       n_samples_per_prompt=rl.n_samples_per_prompt,
                                                       batch_sum=dp_sum, **dict(rl.adv_estimator_options))
    return adv.float()


def score_on_one_rank(run: Run, completions: list[str], labels: list[dict], lengths: list[int]) -> Any:
    """Rewards are computed once per model-parallel group (its first rank) and broadcast: every TP/PP
    rank of a DP group holds the same samples, and scorer pools need not run on every rank."""
    group = ps.get_model_parallel_group()
    src = dist.get_process_group_ranks(group)[0]
    box = [run.reward_fn(completions, labels, lengths) if dist.get_rank() == src else None]
    if dist.get_world_size(group) > 1:
        dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def _filter_metrics(generated: int, kept: int, trained: int, rounds: int, target: int) -> dict[str, float]:
    """Dynamic sampling, summed over DP ranks: rounds, informative (kept) and flat (dropped) groups generated,
    groups trained on, and whether the step trained on a partial batch (the cap was reached)."""
    packed = torch.tensor([float(kept), float(generated - kept), float(trained)], dtype=torch.float64)
    dist.all_reduce(packed, group=ps.get_data_parallel_group())
    return {"filter/gen_rounds": float(rounds), "filter/kept_groups": packed[0].item(),
            "filter/dropped_groups": packed[1].item(), "filter/trained_groups": packed[2].item(),
            "filter/partial_batch": float(trained < target)}


def _step_metrics(run: Run, batch: SequenceBatch | None, generated: list[Group], counters: dict[str, float],
                  update_metrics: list[dict[str, float]], kl_penalty: torch.Tensor | None = None) -> dict[str, float]:
    outputs = [o for g in generated for o in g.outputs]
    rewards = torch.tensor([t for g in generated for t in g.totals], dtype=torch.float32)
    lengths = torch.tensor([len(o.token_ids) for o in outputs], dtype=torch.float32)
    clipped = torch.tensor([o.finish_reason == "length" for o in outputs], dtype=torch.float32)
    kl_sum, kl_count = torch.zeros(()), torch.zeros(())
    if batch is not None and batch.ref_log_probs is not None:
        # one update per rollout: the rollout's own log-probs are the policy's
        logp = batch.old_log_probs if batch.old_log_probs is not None else batch.rollout_log_probs
        kl = masked_mean(estimate_kl(logp, batch.ref_log_probs, run.cfg.rl_config.kl_penalty), batch.response_mask)
        kl_sum, kl_count = kl * len(batch), torch.tensor(float(len(batch)))
    n = run.cfg.rl_config.n_samples_per_prompt
    groups = rewards.view(-1, n)
    flat_groups = (groups.max(dim=1).values == groups.min(dim=1).values).sum().float()  # no learning signal
    sums = {"reward": rewards.sum(), "reward_sq": (rewards ** 2).sum(), "count": torch.tensor(float(len(rewards))),
            "groups": torch.tensor(float(groups.shape[0])), "flat_groups": flat_groups,
            "length": lengths.sum(), "clipped": clipped.sum(), "kl": kl_sum, "kl_count": kl_count,
            "timeouts": torch.tensor(counters["timeouts"]), "errors": torch.tensor(counters["errors"])}
    if run.cfg.rl_config.use_kl_in_reward:  # every rank adds these keys: the all-reduce needs the same ones
        sums["kl_penalty"] = kl_penalty.sum() if kl_penalty is not None else torch.zeros(())
        sums["kl_penalty_count"] = torch.tensor(float(len(kl_penalty) if kl_penalty is not None else 0))
    for name in generated[0].parts if generated else {}:
        sums[f"part/{name}"] = torch.tensor(float(sum(v for g in generated for v in g.parts[name])))
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
        "kl": total["kl"] / max(total["kl_count"], 1.0),
        "reward/timeouts": total["timeouts"],
        "reward/errors": total["errors"],
        # Groups whose samples all scored the same get zero advantage: a high fraction means the
        # task is too easy or too hard for the policy (DAPO's dynamic sampling filters them).
        "reward/flat_group_fraction": total["flat_groups"] / max(total["groups"], 1.0),
    }
    if "kl_penalty" in total:  # the mean over trained samples of beta * sum_t KL_t taken off the score
        metrics["kl_ctrl/penalty"] = total["kl_penalty"] / max(total["kl_penalty_count"], 1.0)
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
