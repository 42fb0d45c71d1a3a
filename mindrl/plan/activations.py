"""Activation memory of one micro-batch through this rank's real model, measured, not estimated.

Inside `world.simulated_rank` the model's tensors are fake, so a full-size forward and backward costs
no memory. `micro_batch_activations` runs the actor's own code on one micro-batch of `rows` x `seq`
tokens — `gpt_forward(hidden_states=True)` and, on the last stage, the fused output layer + chunked
log-prob (`output_log_probs`, mindrl/models/logprobs.py) and a loss over `response` positions per
row — with recompute and sequence parallelism as the model was built, under torch's `MemTracker`
(torch.distributed._tools.mem_tracker). It reports the bytes the pass allocates on top of what
existed before it (weights, DDP buffers, optimizer state):

- `held`: still allocated after the forward, i.e. what a micro-batch keeps for its backward (a
  pipeline stage holds several of these while micro-batches are in flight);
- `peak`: the highest point during forward + backward (for a forward-only pass, during the forward).

The core attention is torch SDPA (the CPU kernel, flash-style under fake tensors: no score matrix);
on a device the backend's kernel may keep slightly different buffers.

May import: torch, megatron-core, mindrl.workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mindrl.workers.megatron_engine import MegatronModel, _gpt_model, gpt_forward, output_log_probs


class KnownMaskCounts(TorchDispatchMode):
    """Fake tensors have no values, so `mask.nonzero()` (boolean indexing, `index_put` with a mask) has no
    size. The only masks in a training forward are the log-prob's `select` ([rows, seq] or its transpose),
    which we made: answer its number of True elements (`selected`); any other mask counts as all True."""

    def __init__(self, mask_numel: int, selected: int) -> None:
        super().__init__()
        self.mask_numel, self.selected = mask_numel, selected

    def _count(self, mask: torch.Tensor) -> int:
        return self.selected if mask.numel() == self.mask_numel else mask.numel()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        aten = torch.ops.aten
        if func is aten.nonzero.default:
            x = args[0]
            return torch.empty((self._count(x), x.dim()), dtype=torch.long, device=x.device)
        if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                    aten._index_put_impl_.default) and any(i is not None and i.dtype == torch.bool for i in args[1]):
            indices: list = []
            for i in args[1]:
                if i is not None and i.dtype == torch.bool:  # a mask over k dims = k integer index tensors
                    n = self._count(i)
                    indices += [torch.empty(n, dtype=torch.long, device=i.device)] * i.dim()
                else:
                    indices.append(i)
            args = (args[0], indices, *args[2:])
        return func(*args, **kwargs)


@dataclass
class ActivationBytes:
    held: int  # allocated at the end of the forward (kept for the backward)
    peak: int  # highest point of forward (+ backward)


def _input_hidden(model: torch.nn.Module, rows: int, seq: int) -> torch.Tensor:
    """The [s, b, h] hidden states a non-first pipeline stage receives (its sequence shard under SP)."""
    cfg = model.config
    s = seq // cfg.tensor_model_parallel_size if cfg.sequence_parallel else seq
    return torch.empty(s, rows, cfg.hidden_size, dtype=cfg.params_dtype, requires_grad=True)


def _inside_ddp(chunk: torch.nn.Module) -> torch.nn.Module:
    from megatron.core.distributed import DistributedDataParallel

    return chunk.module if isinstance(chunk, DistributedDataParallel) else chunk


def micro_batch_activations(model: MegatronModel, chunk_index: int, *, rows: int, seq: int, response: int,
                            vocab_size: int, forward_only: bool = False) -> ActivationBytes:
    """Measure one micro-batch through chunk `chunk_index` of this rank (see the module docstring)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    # DDP's forward only calls its module; MemTracker's module hooks trip over DDP's `buffers` list.
    chunk = _inside_ddp(model.chunks[chunk_index])
    gpt = _gpt_model(chunk)
    tracker = MemTracker()
    external: list[Any] = list(model.unwrapped)  # (DDP shadows Module.buffers() with its own list)
    for c in model.chunks:
        for b in getattr(c, "buffers", []) + getattr(c, "expert_parallel_buffers", []):
            external.append(b.grad_data)
            if b.param_data is not None:
                external.append(b.param_data)
    tracker.track_external(*external)
    select = torch.zeros(rows, seq, dtype=torch.bool)
    select[:, seq - response:] = True
    batch = {"tokens": torch.zeros(rows, seq, dtype=torch.long),
             "position_ids": torch.arange(seq).unsqueeze(0).expand(rows, seq)}
    labels = torch.zeros(rows, seq, dtype=torch.long)
    grad_ctx = torch.no_grad() if forward_only else torch.enable_grad()
    with grad_ctx:
        if not gpt.pre_process:
            hidden_in = _input_hidden(gpt, rows, seq)
            tracker.track_external(hidden_in)  # received from the previous stage: not this pass's allocation
            gpt.set_input_tensor(hidden_in)
        dev = torch.device("cpu")
        base = tracker.get_tracker_snapshot("current").get(dev, {}).get("Total", 0)
        with tracker, KnownMaskCounts(rows * seq, rows * response):
            out = gpt_forward(chunk, batch, hidden_states=True)
            if gpt.post_process:
                logp, _ = output_log_probs(chunk, out, labels, vocab_size, select=select)
                out = logp.sum()
            held = tracker.get_tracker_snapshot("current").get(dev, {}).get("Total", 0) - base
            if not forward_only:
                out.backward(None if out.dim() == 0 else torch.ones_like(out))
            del out
        peak = tracker.get_tracker_snapshot("peak").get(dev, {}).get("Total", 0) - base
    if not gpt.pre_process:
        gpt.set_input_tensor(None)
    return ActivationBytes(held=max(0, held), peak=max(0, peak, held))
