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

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mindrl.workers.megatron_engine import MegatronModel, _gpt_model, gpt_forward, output_log_probs


class KnownMaskCounts(TorchDispatchMode):
    """Fake tensors have no values, so `mask.nonzero()` (boolean indexing, `index_put` with a mask) has no
    size. The only masks in a training forward are the log-prob's `select` ([rows, seq] or its transpose),
    which we made: answer its number of True elements (`selected`); any other mask counts as all True.
    A boolean `.item()` is True: megatron's RNG-tracker fork asserts the CPU RNG state is unchanged
    (`torch.all(a == b).item()`), a check on values fake tensors do not have. An integer `.item()` is
    `expert_tokens`: megatron's SequentialMLP reads its per-expert token counts with `.tolist()`; with
    the planner's balanced routing (drop-and-pad at capacity factor 1) every local expert gets an equal
    share of the tokens it is sent, which `balanced_experts()` sets before each expert block runs."""

    def __init__(self, mask_numel: int, selected: int) -> None:
        super().__init__()
        self.mask_numel, self.selected = mask_numel, selected
        self.expert_tokens: int | None = None

    def _count(self, mask: torch.Tensor) -> int:
        return self.selected if mask.numel() == self.mask_numel else mask.numel()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        aten = torch.ops.aten
        if func is aten._local_scalar_dense.default and args[0].dtype == torch.bool:
            return True
        if func is aten._local_scalar_dense.default and self.expert_tokens is not None:
            return self.expert_tokens
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


@contextlib.contextmanager
def balanced_experts(mode: KnownMaskCounts) -> Iterator[None]:
    """megatron's SequentialMLP.forward with `mode.expert_tokens` = its tokens / local experts."""
    from megatron.core.transformer.moe.experts import SequentialMLP

    original = SequentialMLP.forward

    def forward(self, hidden, tokens_per_expert, probs):  # noqa: ANN001, ANN202
        mode.expert_tokens = hidden.shape[0] // max(1, self.num_local_experts)
        try:
            return original(self, hidden, tokens_per_expert, probs)
        finally:
            mode.expert_tokens = None

    SequentialMLP.forward = forward
    try:
        yield
    finally:
        SequentialMLP.forward = original


@dataclass
class ActivationBytes:
    held: int  # allocated at the end of the forward (kept for the backward)
    peak: int  # highest point of forward (+ backward)
    forward_peak: int = 0  # highest point before the backward


def _input_hidden(model: torch.nn.Module, rows: int, seq: int) -> torch.Tensor:
    """The [s, b, h] hidden states a non-first pipeline stage receives (its sequence shard under SP)."""
    cfg = model.config
    s = seq // cfg.tensor_model_parallel_size if cfg.sequence_parallel else seq
    return torch.empty(s, rows, cfg.hidden_size, dtype=cfg.params_dtype, requires_grad=True)


def _inside_ddp(chunk: torch.nn.Module) -> torch.nn.Module:
    from megatron.core.distributed import DistributedDataParallel

    return chunk.module if isinstance(chunk, DistributedDataParallel) else chunk


@contextlib.contextmanager
def only_layers(gpt: torch.nn.Module, keep: list[int] | None) -> Iterator[None]:
    """Run the decoder with just its layers `keep` (None: all), e.g. one layer of each kind."""
    block = gpt.decoder
    layers, count = block.layers, block.num_layers_per_pipeline_rank
    if keep is not None:
        block.layers = torch.nn.ModuleList([layers[i] for i in keep])
        block.num_layers_per_pipeline_rank = len(keep)
    try:
        yield
    finally:
        block.layers, block.num_layers_per_pipeline_rank = layers, count


class _NoHook:
    def remove(self) -> None:
        pass


_NO_HOOK = _NoHook()


def micro_batch_activations(model: MegatronModel, chunk_index: int, *, rows: int, seq: int, response: int,
                            vocab_size: int, forward_only: bool = False,
                            layers: list[int] | None = None) -> ActivationBytes:
    """Measure one micro-batch through chunk `chunk_index` of this rank (see the module docstring), through
    its decoder layers `layers` only when given (`stage_activations` composes a whole stage from those)."""
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
    # MemTracker (torch 2.13) hooks the gradient of every parameter, and torch refuses a hook on a frozen one
    # (LoRA's base): mark frozen parameters as hooked already, with handles that remove nothing.
    for p in {id(p): p for c in model.chunks for p in c.parameters()}.values():
        if not p.requires_grad:
            tracker._param_to_grad_hook_handles[p] = (_NO_HOOK, _NO_HOOK)
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
        values = KnownMaskCounts(rows * seq, rows * response)
        with tracker, values, balanced_experts(values), only_layers(gpt, layers):
            out = gpt_forward(chunk, batch, hidden_states=True)
            if gpt.post_process:
                logp, _ = output_log_probs(chunk, out, labels, vocab_size, select=select)
                out = logp.sum()
            held = tracker.get_tracker_snapshot("current").get(dev, {}).get("Total", 0) - base
            forward_peak = tracker.get_tracker_snapshot("peak").get(dev, {}).get("Total", 0) - base
            # No trainable parameter on the path (LoRA's frozen base measured without its layers): autograd
            # saved nothing, and there is no backward to run.
            if not forward_only and out.requires_grad:
                out.backward(None if out.dim() == 0 else torch.ones_like(out))
            del out
        peak = tracker.get_tracker_snapshot("peak").get(dev, {}).get("Total", 0) - base
    if not gpt.pre_process:
        gpt.set_input_tensor(None)
    return ActivationBytes(held=max(0, held), peak=max(0, peak, held), forward_peak=max(0, forward_peak, held))


def layer_kind(layer: torch.nn.Module) -> str:
    """Layers of one kind keep the same activations: the MLP's class (dense MLP or MoE) and attention's."""
    return f"{type(layer.self_attention).__name__}/{type(layer.mlp).__name__}"


def stage_activations(model: MegatronModel, chunk_index: int, *, forward_only: bool = False,
                      cache: dict | None = None, **shape: Any) -> ActivationBytes:
    """One micro-batch through a whole chunk, measured on a few of its layers and composed.

    Running every layer of a large stage through fake tensors is slow (a 671B stage: minutes), and
    each layer of a kind adds the same tensors. So: measure the chunk with only its first layer
    (`base`: embedding / output layer / log-prob included where the chunk has them), and with the
    first layer plus one more of each kind; a kind's increment is the difference (measured once per
    kind and reused by later stages). The whole chunk
    holds base.held + the sum of its other layers' increments; its peak is that plus the largest
    (peak - held) of the runs (the transient of the layer that runs last: the backward of the first
    layer, or a recompute). A forward-only pass keeps nothing across layers: its peak is the largest
    peak of one layer of each kind run alone. Runs are cached in `cache` by what they ran (ends of the
    model, layer kinds), so stages that differ only in layer counts are measured once.
    tests/plan/test_plan_activations.py checks the composition against real full runs."""
    gpt = _gpt_model(model.chunks[chunk_index])
    layers = list(gpt.decoder.layers)
    cache = {} if cache is None else cache
    # Full recompute: the training forward runs each layer without keeping its insides, as a forward-only
    # pass does; the forward-only peak is then read off the training runs (no runs of its own).
    recompute = gpt.config.recompute_granularity == "full"
    train_runs = not forward_only or recompute

    def run(keep: list[int]) -> ActivationBytes:
        ends = (gpt.pre_process, gpt.post_process, not train_runs, tuple(sorted(shape.items())))
        key = (ends, tuple(layer_kind(layers[i]) for i in keep))
        if key not in cache:
            cache[key] = micro_batch_activations(model, chunk_index, forward_only=not train_runs, layers=keep,
                                                 **shape)
        return cache[key]

    kinds: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        kinds.setdefault(layer_kind(layer), []).append(i)
    base = run([0])
    if forward_only and not recompute:
        return ActivationBytes(held=0, peak=max(run([idx[0]]).peak for idx in kinds.values()))
    # A kind's increment (held, transient, forward peak of a run holding it) does not depend on the stage: a
    # layer keeps the same tensors wherever it sits. Measured once per kind, in the first chunk that has two
    # layers with it (the first one and one more), and reused by every later stage.
    increments = []
    for kind, idx in kinds.items():
        other = [i for i in idx if i != 0]
        if not other:
            continue
        key = ("increment", kind, not train_runs, tuple(sorted(shape.items())))
        if key not in cache:
            two = run([0, other[0]])
            cache[key] = (two.held - base.held, two.peak - two.held, two.forward_peak)
        increments.append((len(other), *cache[key]))
    if forward_only:
        return ActivationBytes(held=0, peak=max([base.forward_peak] + [fwd for _, _, _, fwd in increments]))
    held, transient = base.held, base.peak - base.held
    for count, step, layer_transient, _ in increments:
        held += step * count
        transient = max(transient, layer_transient)
    return ActivationBytes(held=held, peak=held + transient)
