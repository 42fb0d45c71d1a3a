"""The policy on this rank: log-probs of given sequences (forward only) and GRPO updates.

Works on a `SequenceBatch` (this data-parallel rank's sequences, right-padded). The reference
model is the same class built with `train=False`, or, with LoRA, the actor's own model with its
adapters disabled (`adapters=False`). Loss math comes from mindrl.algorithms; this
module only feeds it megatron's micro-batches and undoes megatron's own loss scaling.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from mindrl.algorithms import compute_actor_loss, logprob_diff_stats, loss_normaliser, rollout_is_clipfrac_weight
from mindrl.models.compile import compile_layers, compiled_layers
from mindrl.models.logprobs import TileMatmul
from mindrl.models.lora import adapters_disabled
from mindrl.workers.megatron_engine import (MegatronModel, forward_backward, gpt_forward, output_log_probs,
                                            output_loss)


@dataclass
class SequenceBatch:
    """N sequences of prompt + response, right-padded to one length L.

    Per-token tensors are in *label* space [N, L-1]: position t predicts tokens[:, t+1].
    """

    tokens: torch.Tensor  # [N, L] int64
    response_mask: torch.Tensor  # [N, L-1] bool: labels that are response tokens
    advantages: torch.Tensor  # [N] or [N, L-1] fp32 (per-token, e.g. REINFORCE++ with a KL penalty in the reward)
    old_log_probs: torch.Tensor | None = None  # [N, L-1]
    ref_log_probs: torch.Tensor | None = None  # [N, L-1]
    rollout_log_probs: torch.Tensor | None = None  # [N, L-1] the rollout engine's (for rollout_is)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, rows: torch.Tensor | slice) -> "SequenceBatch":
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return SequenceBatch(self.tokens[rows], self.response_mask[rows], self.advantages[rows],
                             pick(self.old_log_probs), pick(self.ref_log_probs), pick(self.rollout_log_probs))


def build_sequence_batch(prompts: list[list[int]], responses: list[list[int]], advantages: torch.Tensor,
                         pad_id: int = 0) -> SequenceBatch:
    """Concatenate each prompt with its response and right-pad; mark response labels."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    length = max(len(p) + len(r) for p, r in zip(prompts, responses))
    tokens = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), length - 1, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        tokens[i, :len(p) + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.long)
        mask[i, len(p) - 1:len(p) - 1 + len(r)] = True
    return SequenceBatch(tokens, mask, advantages.float())


def sequence_lengths(batch: SequenceBatch) -> torch.Tensor:
    """Tokens each row needs in a forward: up to its last response token (at least 2)."""
    mask = batch.response_mask
    last = torch.where(mask.any(1), mask.shape[1] - 1 - mask.flip(1).int().argmax(1), torch.zeros(len(mask)).long())
    return (last + 2).clamp(min=2)


def token_budget_groups(lengths: torch.Tensor, max_tokens: int, *, packed: bool = False
                        ) -> list[tuple[torch.Tensor, int]]:
    """Split rows into micro-batches of at most `max_tokens` tokens, as verl's `use_dynamic_bsz` /
    slime's `--max-tokens-per-gpu` do: padded tokens (rows x longest row), or with `packed` the sum
    of the rows' lengths (sequences packed back to back, no padding). Deterministic: rows sorted by
    length, longest first (ties by index), filled greedily; a row longer than the budget goes alone.
    Returns (row indices, longest row) per micro-batch. Sorting by length keeps the padding small,
    so long-tailed batches do not pay the longest row's length on every row."""
    order = torch.sort(-lengths, stable=True).indices.tolist()
    groups: list[tuple[list[int], int, int]] = []  # rows, longest, tokens
    for i in order:
        n = int(lengths[i])
        if groups and (groups[-1][2] + n if packed else (len(groups[-1][0]) + 1) * groups[-1][1]) <= max_tokens:
            groups[-1][0].append(i)
            groups[-1] = (groups[-1][0], groups[-1][1], groups[-1][2] + n)
        else:
            groups.append(([i], n, n))
    return [(torch.tensor(rows), length) for rows, length, _ in groups]


def pack_rows(batch: SequenceBatch, rows: torch.Tensor, lengths: torch.Tensor, multiple: int = 1
              ) -> dict[str, Any]:
    """The model inputs of `rows` packed into one sequence without padding: megatron's `thd` layout
    (`packed_seq_params` with the sequences' bounds; the attention stays within each sequence and
    RoPE restarts at each), position ids restarting per sequence, labels, and `select` (the response
    labels) all [1, t]; `unpack` = (index [rows, width] into t, valid) to bring per-token results back
    to the rows' layout. Row i contributes its first lengths[i] - 1 inputs. t is padded to a
    `multiple` (sequence parallelism splits it) with one extra, unselected, sequence."""
    from megatron.core.packed_seq_params import PackedSeqParams

    seg = [int(lengths[r]) - 1 for r in rows]
    total = sum(seg)
    pad = -total % multiple
    cat = lambda parts, fill: torch.cat(parts + [torch.full((pad,), fill, dtype=parts[0].dtype)])[None]  # noqa: E731
    bounds = torch.tensor([0] + seg + ([pad] if pad else []), dtype=torch.int32).cumsum(0, dtype=torch.int32)
    width = max(seg)
    steps = torch.arange(width)
    return {
        "tokens": cat([batch.tokens[r, :n] for r, n in zip(rows, seg)], 0),
        "labels": cat([batch.tokens[r, 1:n + 1] for r, n in zip(rows, seg)], 0),
        "select": cat([batch.response_mask[r, :n] for r, n in zip(rows, seg)], False),
        "position_ids": torch.cat([torch.arange(n) for n in seg + ([pad] if pad else [])])[None],
        "packed_seq_params": PackedSeqParams(qkv_format="thd", cu_seqlens_q=bounds, cu_seqlens_kv=bounds,
                                             max_seqlen_q=max(seg + [pad]), max_seqlen_kv=max(seg + [pad])),
        "unpack": ((bounds[:len(seg), None] + steps).clamp(max=total - 1).long(),
                   steps < torch.tensor(seg)[:, None]),
    }


def _row_layout(mb: dict[str, Any], values: torch.Tensor) -> torch.Tensor:
    """Per-token model results in the micro-batch rows' layout [rows, width] (0 past a row's end)."""
    if "unpack" not in mb:
        return values
    index, valid = mb["unpack"]
    return values[0][index] * valid


def _last_stage_broadcast(tensor: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """Give every pipeline stage the last stage's tensor (forward-only results live there)."""
    if ps.get_pipeline_model_parallel_world_size() == 1:
        assert tensor is not None
        return tensor
    buf = tensor.contiguous() if tensor is not None else torch.empty(shape, dtype=torch.float32)
    dist.broadcast(buf, src=ps.get_pipeline_model_parallel_last_rank(), group=ps.get_pipeline_model_parallel_group())
    return buf


class PolicyWorker:
    """A megatron model (actor or frozen reference) on this rank."""

    def __init__(self, model: MegatronModel, *, micro_batch_size: int, temperature: float = 1.0,
                 max_tokens_per_micro_batch: int | None = None, adapters: bool = True,
                 use_torch_compile: bool = False, compiled_logprob_tiles: bool = False,
                 head_grad_in_forward: bool = True, logits_matmul: TileMatmul | None = None) -> None:
        self.model = model
        # The backend's kernel for the fused output layer's logits tiles (Backend.logits_matmul), else torch.mm.
        self.logits_matmul = logits_matmul
        # The update's output layer takes the loss and computes its gradient in the forward (mindrl.models.fused_loss).
        self.head_grad_in_forward = head_grad_in_forward
        # The fused output layer's per-tile elementwise work in compiled kernels (mindrl.models.logprob_tiles).
        self.compiled_logprob_tiles = compiled_logprob_tiles
        # torch.compile of the transformer layers for this worker's forwards (mindrl.models.compile);
        # the rollout engine, which may share these modules, stays eager.
        self.use_torch_compile = use_torch_compile
        if use_torch_compile:
            compile_layers(model.unwrapped)
        # False: this worker is the LoRA actor's base (the reference policy): its log-probs run with
        # every adapter disabled, on the actor's own weights (no second copy).
        self.adapters = adapters
        self.micro_batch_size = micro_batch_size
        self.max_tokens_per_micro_batch = max_tokens_per_micro_batch
        if max_tokens_per_micro_batch is not None and ps.get_pipeline_model_parallel_world_size() > 1:
            raise ValueError("max_tokens_per_micro_batch needs pipeline_model_parallel_size=1 (megatron's "
                             "pipeline schedules need one micro-batch shape per call)")
        self.temperature = temperature if temperature > 0 else 1.0
        self.vocab_size = model.plan.vocab_size
        # Token-budget micro-batches are packed without padding (`pack_rows`): exact, since attention
        # stays within each sequence. Not for multi-latent attention, whose packed (thd) path in
        # megatron is untested here; those keep right-padded, length-sorted groups.
        self.pack = max_tokens_per_micro_batch is not None and not model.plan.args.mla

    def _compiled(self) -> contextlib.AbstractContextManager:
        """The compiled transformer layers for one schedule call, when this worker uses them."""
        return compiled_layers(self.model.unwrapped) if self.use_torch_compile else contextlib.nullcontext()

    def _micro_batches(self, batch: SequenceBatch) -> list[dict[str, torch.Tensor]]:
        """Fixed `micro_batch_size` rows each, or token-budget groups (see `token_budget_groups`),
        packed without padding (`pack_rows`) where the model allows, else each cut to its own longest
        row. `rows` says which batch rows a micro-batch holds; the per-token loss inputs
        (response_mask, advantages, old/ref/rollout log-probs) are always in the rows' layout."""
        tp = ps.get_tensor_model_parallel_world_size()
        lengths = sequence_lengths(batch)
        if self.max_tokens_per_micro_batch is None:
            groups = [(torch.arange(s, min(s + self.micro_batch_size, len(batch))), batch.tokens.shape[1])
                      for s in range(0, len(batch), self.micro_batch_size)]
        else:
            groups = token_budget_groups(lengths, self.max_tokens_per_micro_batch, packed=self.pack)
            # Inputs a multiple of TP long (sequence parallelism splits them), never past the batch width.
            width = batch.tokens.shape[1]
            groups = [(rows, n if self.pack else min(width, 1 + -(-(n - 1) // tp) * tp)) for rows, n in groups]
        out = []
        for rows, length in groups:
            adv = batch.advantages[rows]
            mb = {"rows": rows, "tokens": batch.tokens[rows, :length - 1], "labels": batch.tokens[rows, 1:length],
                  "response_mask": batch.response_mask[rows, :length - 1],
                  "advantages": adv if adv.dim() == 1 else adv[:, :length - 1]}  # [N] or per token [N, L-1]
            if self.pack:
                mb.update(pack_rows(batch, rows, lengths, tp))
            for name in ("old_log_probs", "ref_log_probs", "rollout_log_probs"):
                value = getattr(batch, name)
                if value is not None:
                    mb[name] = value[rows, :length - 1]
            out.append(mb)
        return out

    @torch.no_grad()
    def log_probs(self, batch: SequenceBatch) -> torch.Tensor:
        """[N, L-1] fp32 log-probs of the response labels under this model, 0 off the response (the
        output layer runs on response positions only), on every rank."""
        for chunk in self.model.chunks:
            chunk.eval()

        def forward(chunk: torch.nn.Module, mb: dict[str, torch.Tensor]):
            output = gpt_forward(chunk, mb, hidden_states=True)

            def collect(hidden: torch.Tensor):
                # The rollout engine samples from softmax(logits / T); log-probs are of that same distribution.
                logp = output_log_probs(chunk, hidden, mb["labels"], self.vocab_size,
                                        select=mb.get("select", mb["response_mask"]), temperature=self.temperature,
                                        compiled=self.compiled_logprob_tiles, entropy=False,
                                        matmul=self.logits_matmul)[0]
                logp = _row_layout(mb, logp)
                return logp.sum() * 0.0, {"log_probs": logp}
            return output, collect

        micro = self._micro_batches(batch)
        with contextlib.nullcontext() if self.adapters else adapters_disabled(self.model.unwrapped), \
                self._compiled():
            reported = forward_backward(self.model, micro, forward, forward_only=True)
        local = None
        if reported:  # back to batch order and width; labels past a row's micro-batch width are not response
            local = torch.zeros(len(batch), batch.tokens.shape[1] - 1)
            for mb, r in zip(micro, reported):
                local[mb["rows"], :r["log_probs"].shape[1]] = r["log_probs"]
        return _last_stage_broadcast(local, (len(batch), batch.tokens.shape[1] - 1))

    def update(self, batch: SequenceBatch, rl: Any, max_response_length: int | None = None) -> dict[str, float]:
        """One optimizer step on this mini-batch (all its micro-batches; gradients accumulated).

        `max_response_length` is the constant L of loss_agg_mode seq-mean-token-sum-norm (sampling max_tokens)."""
        for chunk in self.model.chunks:
            chunk.train()
        micro = self._micro_batches(batch)
        # Aggregation over the whole mini-batch on every DP rank, not per micro-batch.
        normaliser = sum(loss_normaliser(mb["response_mask"], rl.loss_agg_mode) for mb in micro)
        normaliser = torch.as_tensor(normaliser, dtype=torch.float32).clone()
        dist.all_reduce(normaliser, group=ps.get_data_parallel_group())
        # megatron divides the returned loss by the number of micro-batches and DDP averages grads
        # over DP; the normaliser above already accounts for both, so undo them.
        undo = len(micro) * ps.get_data_parallel_world_size()
        # the gradient megatron's schedule brings to the fused loss below: undo / micro-batches (its division),
        # times its loss scale where one is set (config.grad_scale_func)
        scale_fn = getattr(self.model.plan.config, "grad_scale_func", None)
        upstream = undo / len(micro) * (float(scale_fn(torch.ones(1))) if scale_fn is not None else 1.0)

        def forward(chunk: torch.nn.Module, mb: dict[str, torch.Tensor]):
            output = gpt_forward(chunk, mb, hidden_states=True)

            def actor_loss(logp: torch.Tensor, entropy: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
                """The loss and its metrics from [b, s] log-probs and entropies in the model's layout."""
                logp, entropy = _row_layout(mb, logp), _row_layout(mb, entropy)
                adv = mb["advantages"]
                adv = adv.unsqueeze(1).expand_as(logp) if adv.dim() == 1 else adv
                old = mb.get("old_log_probs", logp.detach())
                loss, metrics = compute_actor_loss(
                    logp, old, adv, mb["response_mask"], ref_log_prob=mb.get("ref_log_probs"), entropy=entropy,
                    policy_loss=rl.policy_loss, clip_ratio=rl.clip_ratio, clip_ratio_low=rl.clip_ratio_low,
                    clip_ratio_high=rl.clip_ratio_high, clip_ratio_c=rl.clip_ratio_c, entropy_coeff=rl.entropy_coeff,
                    use_kl_loss=rl.use_kl_loss and mb.get("ref_log_probs") is not None, kl_loss_coef=rl.kl_coef,
                    kl_loss_type=rl.kl_penalty, loss_agg_mode=rl.loss_agg_mode, global_normaliser=normaliser,
                    max_response_length=max_response_length, rollout_log_prob=mb.get("rollout_log_probs"),
                    rollout_is_level=rl.rollout_is.level,
                    rollout_is_threshold=rl.rollout_is.threshold if rl.rollout_is.enable else None)
                return loss, metrics

            def loss_fn(hidden: torch.Tensor):
                # Output layer on response positions only, fused with the log-probs (0 elsewhere).
                select = mb.get("select", mb["response_mask"])
                if self.head_grad_in_forward:  # ... and with the loss: its gradient computed in the forward
                    loss, logp, entropy = output_loss(
                        chunk, hidden, mb["labels"], self.vocab_size, lambda lp, ent: actor_loss(lp, ent)[0],
                        select=select, temperature=self.temperature, compiled=self.compiled_logprob_tiles,
                        entropy_grad=rl.entropy_coeff != 0, upstream=upstream, matmul=self.logits_matmul)
                    metrics = actor_loss(logp, entropy)[1]
                    # outside the fused loss: megatron's 1 / micro-batches then cancels `undo` in its upstream
                    # gradient (1 at one DP rank: the backward skips the scaling pass)
                    loss = loss * undo
                else:
                    logp, entropy = output_log_probs(chunk, hidden, mb["labels"], self.vocab_size, select=select,
                                                     temperature=self.temperature,
                                                     compiled=self.compiled_logprob_tiles,
                                                     matmul=self.logits_matmul)
                    if rl.entropy_coeff == 0:
                        entropy = entropy.detach()  # a metric only: no backward through it
                    loss, metrics = actor_loss(logp, entropy)
                    loss = loss * undo
                logp = _row_layout(mb, logp)
                tokens = mb["response_mask"].sum().float()
                weights = dict.fromkeys(metrics, tokens)  # token-weighted for averaging
                if "rollout_is_clipfrac" in metrics:  # a row fraction at sequence level: weighted by rows
                    weights["rollout_is_clipfrac"] = rollout_is_clipfrac_weight(mb["response_mask"],
                                                                                rl.rollout_is.level)
                metrics = {k: v.float() * weights[k] for k, v in metrics.items()}
                metrics["_tokens"] = tokens
                if "rollout_is_clipfrac" in metrics:
                    metrics["_is_clipfrac_weight"] = weights["rollout_is_clipfrac"]
                if mb.get("rollout_log_probs") is not None:  # this forward runs before the optimizer step
                    diff = logprob_diff_stats(logp, mb["rollout_log_probs"], mb["response_mask"])
                    metrics["_logprob_diff_sum"], metrics["_logprob_diff_max"] = diff["sum"], diff["max"]
                return loss, metrics
            return output, loss_fn

        with self._compiled():
            reported = forward_backward(self.model, micro, forward)
        # A non-finite loss on any rank skips the update everywhere (the trainer counts and stops).
        bad = torch.tensor([float(any(not torch.isfinite(r["pg_loss"]).all() for r in reported))])
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item():
            self.model.optimizer.zero_grad()
            metrics = self._reduce_metrics(reported, False, float("nan"))
            metrics["actor/skipped"] = 1.0
            return metrics
        ok, grad_norm, _ = self.model.optimizer.step()
        if self.model.scheduler is not None:
            self.model.scheduler.step(increment=1)
        metrics = self._reduce_metrics(reported, ok, grad_norm)
        metrics["actor/skipped"] = 0.0
        if not rl.rollout_is.enable:  # reduced with the rest (a fixed layout), but not measured
            metrics.pop("actor/rollout_is_mean"), metrics.pop("actor/rollout_is_clipfrac")
        return metrics

    @staticmethod
    def _reduce_metrics(reported: list[dict[str, torch.Tensor]], ok: bool, grad_norm: Any) -> dict[str, float]:
        """Weighted means of the loss metrics over micro-batches and DP ranks: by response tokens, except
        rollout_is_clipfrac (by its `_is_clipfrac_weight`: rows at sequence level). Also the rollout engine's
        log-prob distance to this update's forward (before its optimizer step): rollout/logprob_diff_mean
        (token mean) and rollout/logprob_diff_max (max over micro-batches and ranks)."""
        # Every rank must enter the collective with the same layout: the metric names are fixed.
        keys = ["_tokens", "_is_clipfrac_weight", "_logprob_diff_sum", "pg_loss", "pg_clipfrac", "ppo_kl", "entropy",
                "kl_loss", "rollout_is_mean", "rollout_is_clipfrac"]
        values = torch.zeros(len(keys) + 1)  # + the max, reduced apart
        for r in reported:
            for i, k in enumerate(keys):
                if k in r:
                    values[i] += r[k].float()
            if "_logprob_diff_max" in r:
                values[-1] = torch.maximum(values[-1], r["_logprob_diff_max"].float())
        diff_max = values[-1:].clone()
        dist.all_reduce(diff_max, op=dist.ReduceOp.MAX)
        values = values[:-1].contiguous()
        dist.all_reduce(values)  # last-stage ranks hold them; others add zeros
        tp = ps.get_tensor_model_parallel_world_size()
        values /= tp  # every TP rank of the last stage reported the same numbers
        total = dict(zip(keys, values))
        tokens = total["_tokens"].clamp(min=1.0)
        out = {f"actor/{k}": (total[k] / tokens).item() for k in keys if not k.startswith("_")}
        out["actor/rollout_is_clipfrac"] = (total["rollout_is_clipfrac"] / total["_is_clipfrac_weight"].clamp(
            min=1.0)).item()
        out["rollout/logprob_diff_mean"] = (total["_logprob_diff_sum"] / tokens).item()
        out["rollout/logprob_diff_max"] = diff_max.item()
        out["actor/grad_norm"] = float(grad_norm) if grad_norm is not None else 0.0
        out["actor/update_ok"] = float(bool(ok))
        return out
