"""Checkpoints and a live, sharded megatron model (inside its process groups).

- `load_megatron_checkpoint(chunks, dir)`: this rank's slices of a converted checkpoint, whatever
  layout the checkpoint was written at (tensors are merged from its rank files and re-sliced for
  this rank by `mindrl.models.layout`'s plan).
- `iter_hf_buckets(chunks, hf_cfg, experts=...)`: HF-named full tensors in size-bounded buckets,
  gathered over TP/PP/EP; every rank gets every dense tensor and the routed experts its rollout
  shard holds (`experts`; None: all of them). Rollout engines call `load_weights(bucket)` with them.
  With LoRA adapters on `chunks` the tensors are the merged weights (base + scaling * B @ A).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Collection, Iterator, Mapping as TMapping

import torch
import torch.distributed as dist

from mindrl.checkpoint.convert import MegatronSource
from mindrl.checkpoint.hf_mapping import Mapping
from mindrl.models.lora import gather_canonical_adapters, has_lora, merge_canonical_
from mindrl.models.layout import ShardSpec, expert_id, iter_local
from mindrl.models.sharding import slice_canonical


@torch.no_grad()
def load_megatron_checkpoint(chunks: list[torch.nn.Module], ckpt_dir: str | Path) -> None:
    """Copy this rank's slices of a tools/convert_ckpt.py checkpoint into `chunks` (any layout)."""
    source = MegatronSource(Path(ckpt_dir))
    cache: dict[str, torch.Tensor] = {}
    for name, spec, tensor in iter_local(chunks, source.m.num_experts):
        if spec.global_name not in source.pieces:
            raise KeyError(f"{ckpt_dir}: checkpoint has no tensor '{spec.global_name}' (for local '{name}')")
        if spec.global_name not in cache:
            cache.clear()  # one canonical tensor in memory at a time (tied copies read it twice)
            cache[spec.global_name] = source.read(spec.global_name)
        tensor.copy_(slice_canonical(cache[spec.global_name], spec, tensor.shape).to(tensor.dtype))
    for f in source.files:
        f.close()


def iter_hf_buckets(chunks: list[torch.nn.Module], hf_cfg: TMapping[str, Any], bucket_bytes: int = 512 * 1024**2,
                    hf_names: bool = True, target: Any = None, arena: "PushArena | None" = None,
                    experts: Collection[int] | None = None, stats: dict[str, int] | None = None,
                    merge_lora: bool = True) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """HF-named, full (unsharded, vocab unpadded) tensors in buckets of about `bucket_bytes`.
    `hf_names=False`: the canonical megatron tensors of the same mapping instead (a megatron
    consumer, e.g. the built-in rollout copy, then skips the HF split and its re-merge).
    `target(canonical_name, shape, dtype)` may return the tensor a full canonical tensor should be
    received into (a rollout copy's own parameter when its shard is the whole tensor): the bytes
    then land in place and the consumer's load is a no-op for it (for a vocab tensor: its first
    vocab_size rows; the consumer zeroes its own padding rows). `arena`: the send/receive buffer to
    reuse (a caller pushing repeatedly keeps one; default: one for this call).

    Collective: every rank of the world must iterate it to the end, in step. Buckets follow the
    mapping's rule order, which every rank knows from the config alone, so ranks agree on them
    without talking; per bucket the ranks exchange their pieces' specs, then each sending rank
    broadcasts all its pieces of the bucket packed in one flat buffer, and every rank copies them
    into their slots of the full tensors (`_gather_full`). Only the first
    data-parallel copy of a piece is sent (the first expert-data-parallel copy for experts), and
    only the current bucket is materialised: peak extra memory is about one bucket (plus its HF
    split when `hf_names`, for q/k/v and gate/up).

    `experts`: the global routed-expert ids this rank's rollout shard holds (None: every one). The
    sets are exchanged once per call; a routed-expert tensor then reaches only the ranks that hold
    it — point to point from each of its sending ranks, one packed message per (sender, receiver)
    and bucket — and a bucket holds only the experts of this rank. Dense tensors still reach every
    rank whole (vLLM's `load_weights` slices full tensors itself). `stats`: "recv_bytes" /
    "sent_bytes" are incremented by the payload this rank received from / sent to other ranks (a
    broadcast counts once on its sender). `merge_lora=False`: a LoRA actor's base tensors as they are
    (vLLM's adapter push sends the base once and the adapters separately, mindrl/rollout/vllm_engine.py).
    """
    m = Mapping(hf_cfg)
    # LoRA: the pushed tensors are merged (W + scaling * B @ A, in fp32, cast once), so any consumer
    # (a rollout copy at another layout, vLLM) needs no adapter support; the actor is not modified.
    adapters, scaling = gather_canonical_adapters(chunks) if merge_lora and has_lora(chunks) else ({}, 0.0)
    mine: dict[str, list[tuple[dict[str, Any], torch.Tensor]]] = {}
    sender = _first_copies()
    for name, spec, t in iter_local(chunks, m.num_experts):
        if spec.duplicate or not sender(".experts.local_experts." in name):
            continue
        mine.setdefault(spec.global_name, []).append((spec.to_dict(), t))
    world = dist.get_world_size() if dist.is_initialized() else 1
    device = next(p.device for c in chunks for p in c.parameters())
    arena = arena or PushArena()
    wants: list[Any] = [None if experts is None else sorted(int(e) for e in experts)]
    if world > 1:
        wants = [None] * world
        dist.all_gather_object(wants, None if experts is None else sorted(int(e) for e in experts))
    owners = _ExpertOwners(wants)
    bucket: list[str] = []
    size = 0
    for i, rule in enumerate(m.rules):
        bucket.append(rule.canonical)
        size += torch.Size(rule.shape).numel() * 4
        if size >= bucket_bytes or i == len(m.rules) - 1:
            pieces = [(d, t.detach()) for name in bucket for d, t in mine.get(name, [])]
            full = _gather_full(pieces, world, device, m.vocab_size, target, arena, owners, stats)
            for name in bucket if adapters else ():
                if name in full:  # not: a routed expert another rank holds (LoRA on experts is refused)
                    merge_canonical_(name, full[name], adapters, hf_cfg, scaling)
            out = []
            for name in bucket:
                if name not in full:  # a routed expert another rank's rollout shard holds
                    continue
                r = m.by_canonical[name]
                out += list(zip(r.hf, m.to_hf(r, full[name]))) if hf_names else [(name, full[name])]
            yield out
            bucket, size = [], 0


class PushArena:
    """One flat byte buffer a weight push packs and receives each source's share of a bucket in,
    reused across buckets and pushes (grows to the largest share, never shrinks): on CPU a fresh
    buffer per bucket costs a page fault per 4 KiB, which measured as slow as the transfer itself;
    on accelerators it saves the allocator round trip. Holds at most one bucket."""

    def __init__(self) -> None:
        self.buf: torch.Tensor | None = None

    def get(self, nbytes: int, device: torch.device) -> torch.Tensor:
        if self.buf is None or self.buf.numel() < nbytes or self.buf.device != device:
            self.buf = None  # free the old one first: peak stays one buffer
            self.buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return self.buf[:nbytes]

    def release(self) -> None:
        self.buf = None


_ALIGN = 64  # bytes: every packed piece starts aligned, so a byte view can be re-viewed as any dtype


class _ExpertOwners:
    """Which ranks receive a canonical tensor: every rank for dense tensors; for a routed expert the
    ranks whose `experts` set holds its id (a rank that gave None holds every expert)."""

    def __init__(self, wants: list[list[int] | None]) -> None:
        self.world = len(wants)
        self.sets = [None if w is None else set(w) for w in wants]
        self.everyone = all(w is None for w in self.sets)

    def receivers(self, name: str) -> list[int] | None:
        """Ranks that get `name`, or None for all of them."""
        expert = None if self.everyone else expert_id(name)
        if expert is None:
            return None
        got = [r for r, w in enumerate(self.sets) if w is None or expert in w]
        return None if len(got) == self.world else got


def _gather_full(pieces: list[tuple[dict[str, Any], torch.Tensor]], world: int, device: torch.device,
                 vocab_size: int, target: Any = None, arena: PushArena | None = None,
                 owners: _ExpertOwners | None = None, stats: dict[str, int] | None = None
                 ) -> dict[str, torch.Tensor]:
    """The bucket's canonical tensors, whole (vocab unpadded): every dense one on every rank, a
    routed expert on the ranks `owners` names.

    The specs travel as objects (small). The bytes of tensors every rank receives travel with one
    `broadcast` per sending rank: the sender packs every such piece it owns for this bucket into one
    flat buffer (`arena`), the others receive it and copy each piece out into its slot of the full
    tensor (a TP slice, or the two halves of SwiGLU fc1's [gate_r; up_r]). So each byte is sent once,
    the collective count is the number of senders (not of pieces), and the extra memory is one
    sender's share plus the full tensors. Routed experts with fewer receivers go point to point
    afterwards, one packed message per (sender, receiver) pair (`batch_isend_irecv`); a sender that
    does not hold the expert in the rollout packs its piece without building the full tensor. One
    source per (tensor, TP rank): data-parallel copies send nothing; vocab padding rows are not
    sent. `target` may place a full tensor in the consumer's own parameter (then nothing more is
    copied on receivers).
    """
    owners = owners or _ExpertOwners([None] * world)
    meta = [(d, tuple(t.shape), t.dtype) for d, t in pieces]
    metas: list[Any] = [meta]
    if world > 1:
        metas = [None] * world
        dist.all_gather_object(metas, meta)
    me = dist.get_rank() if world > 1 else 0
    own = {(d["global_name"], d["tp_rank"]): t for d, t in pieces}
    chosen: dict[tuple[str, int], tuple[int, ShardSpec, tuple[int, ...], torch.dtype]] = {}
    for src, m in enumerate(metas):  # the same order on every rank
        for d, shape, dt in m:
            spec = ShardSpec(**d)
            chosen.setdefault((spec.global_name, spec.tp_rank if spec.split_dim is not None else 0),
                              (src, spec, shape, dt))
    full: dict[str, torch.Tensor] = {}
    slots_of: dict[str, torch.Tensor] = {}  # the full tensor, or its shape on "meta" where this rank gets none
    receivers: dict[str, list[int] | None] = {}
    for (name, _), (src, spec, shape, dt) in chosen.items():
        if name not in slots_of:
            size = list(shape)
            if spec.split_dim is not None:
                size[spec.split_dim] *= spec.tp_size
            if spec.vocab:
                size[0] = vocab_size
            receivers[name] = owners.receivers(name)
            if receivers[name] is not None and me not in receivers[name]:
                slots_of[name] = torch.empty(size, dtype=dt, device="meta")
                continue
            into = None if target is None else target(name, tuple(size), dt)
            full[name] = into if into is not None else torch.empty(size, dtype=dt, device=device)
            slots_of[name] = full[name]
    # Per sender (broadcast) / per (sender, receiver) pair (point to point), in the same order on
    # every rank: (slot in the full tensor, its cut of the piece on the sender).
    parts: list[list[tuple[torch.Tensor, torch.Tensor | None]]] = [[] for _ in range(world)]
    pairs: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor | None]]] = {}
    for (name, _), (src, spec, shape, dt) in chosen.items():
        mine = own.get((name, spec.tp_rank)) if src == me else None
        for slot, cut in _slots(slots_of[name], spec, shape):
            local = None if mine is None else cut(mine)
            if receivers[name] is None:
                parts[src].append((slot, local))
                continue
            if local is not None and me in receivers[name]:
                slot.copy_(local)
            for dst in receivers[name]:
                if dst != src and me in (src, dst):
                    pairs.setdefault((src, dst), []).append((slot, local))
    arena = arena or PushArena()
    stats = stats if stats is not None else {}
    for src, todo in enumerate(parts):
        if not todo:
            continue
        if world == 1:
            for slot, local in todo:
                slot.copy_(local)
            continue
        buf, views = _pack_views(arena, [slot for slot, _ in todo], device)
        if src == me:
            for view, (slot, local) in zip(views, todo):
                view.copy_(local)
                slot.copy_(local)
        dist.broadcast(buf, src=src)
        if src != me:
            for view, (slot, _) in zip(views, todo):
                slot.copy_(view)
        key = "sent_bytes" if src == me else "recv_bytes"
        stats[key] = stats.get(key, 0) + sum(v.numel() * v.element_size() for v in views)
    if pairs:
        _exchange_pairs(pairs, me, arena, device, stats)
    return full


def _pack_views(arena: PushArena, slots: list[torch.Tensor], device: torch.device, offset: int = 0,
                total: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """An arena buffer with one aligned view per slot (same shape and dtype), from `offset`."""
    offsets, nbytes = [], offset
    for slot in slots:
        offsets.append(nbytes)
        nbytes += -(-slot.numel() * slot.element_size() // _ALIGN) * _ALIGN
    buf = arena.get(total if total is not None else nbytes, device)
    views = [buf[o:o + s.numel() * s.element_size()].view(s.dtype).view(s.shape) for o, s in zip(offsets, slots)]
    return buf[offset:nbytes], views


def _exchange_pairs(pairs: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor | None]]], me: int,
                    arena: PushArena, device: torch.device, stats: dict[str, int]) -> None:
    """One packed message per (sender, receiver) pair this rank is part of, all posted at once; the
    arena holds every one of this rank's messages of the bucket side by side."""
    keys = sorted(pairs)
    sizes = [sum(-(-s.numel() * s.element_size() // _ALIGN) * _ALIGN for s, _ in pairs[k]) for k in keys]
    total = sum(sizes)
    ops, unpack, offset = [], [], 0
    for key, size in zip(keys, sizes):
        src, dst = key
        buf, views = _pack_views(arena, [slot for slot, _ in pairs[key]], device, offset, total)
        offset += size
        payload = sum(v.numel() * v.element_size() for v in views)
        if src == me:
            for view, (_, local) in zip(views, pairs[key]):
                view.copy_(local)
            ops.append(dist.P2POp(dist.isend, buf, dst))
            stats["sent_bytes"] = stats.get("sent_bytes", 0) + payload
        else:
            ops.append(dist.P2POp(dist.irecv, buf, src))
            unpack.append((views, pairs[key]))
            stats["recv_bytes"] = stats.get("recv_bytes", 0) + payload
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    for views, todo in unpack:
        for view, (slot, _) in zip(views, todo):
            slot.copy_(view)


def _slots(full: torch.Tensor, spec: ShardSpec, shape: tuple[int, ...]) -> list[tuple[torch.Tensor, Any]]:
    """(view of `full` a piece fills, how to cut that part from the piece) for one piece; a vocab
    piece's rows past the real vocabulary (`full` has none) are TP padding and are left out."""
    if spec.split_dim is None:
        if spec.vocab:
            return [(full, lambda t: t.narrow(0, 0, full.shape[0]))]
        return [(full, lambda t: t)]
    dim, n = spec.split_dim, shape[spec.split_dim]
    if not spec.gated:
        start = spec.tp_rank * n
        keep = min(n, full.shape[dim] - start) if spec.vocab and dim == 0 else n
        if keep <= 0:
            return []
        return [(full.narrow(dim, start, keep), lambda t: t.narrow(dim, 0, keep))]
    h, total = n // 2, full.shape[dim] // 2  # [gate_r; up_r] -> gate block r of [gate; up], up block r
    return [(full.narrow(dim, spec.tp_rank * h, h), lambda t: t.narrow(dim, 0, h)),
            (full.narrow(dim, total + spec.tp_rank * h, h), lambda t: t.narrow(dim, h, h))]


def _first_copies() -> Any:
    """is_expert -> whether this rank sends its copy (data-parallel replicas hold the same pieces)."""
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return lambda is_expert: True
    dense = ps.get_data_parallel_rank() == 0
    expert = ps.get_expert_data_parallel_rank() == 0
    return lambda is_expert: expert if is_expert else dense


class HFShardLoader:
    """Loads full tensors from `iter_hf_buckets` (HF or canonical names) into this rank's shard of `chunks`.

    Built and called inside the target model's parallel state (its TP/EP ranks decide the slices).
    HF tensors that together make one canonical tensor (q/k/v, gate/up) may arrive in any order
    and any buckets; the canonical tensor is assembled and copied when its last piece arrives.
    `counts` records how often each local tensor was written (a push must write each exactly once).
    """

    def __init__(self, chunks: list[torch.nn.Module], hf_cfg: TMapping[str, Any]) -> None:
        self.m = Mapping(hf_cfg)
        self.targets: dict[str, list[tuple[ShardSpec, torch.Tensor]]] = {}
        for _, spec, t in iter_local(chunks, self.m.num_experts):
            key = "embedding.word_embeddings.weight" if spec.duplicate else spec.global_name
            self.targets.setdefault(key, []).append((spec, t))
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self.counts: dict[str, int] = {}

    @torch.no_grad()
    def load(self, named_tensors: Any) -> None:
        for name, tensor in named_tensors:
            if name in self.m.by_canonical:
                rule, full = self.m.by_canonical[name], tensor
            else:
                rule = self.m.by_hf.get(name)
                if rule is None:
                    raise KeyError(f"'{name}' is not a tensor of this {self.m.model_type} model")
                got = self.pending.setdefault(rule.canonical, {})
                got[name] = tensor
                if len(got) < len(rule.hf):
                    continue
                del self.pending[rule.canonical]
                full = self.m.to_canonical(rule, [got[n] for n in rule.hf])
            for spec, t in self.targets.get(rule.canonical, []):  # experts of other EP ranks: none here
                if full.data_ptr() != t.data_ptr():
                    t.copy_(slice_canonical(full, spec, t.shape).to(t.dtype))
                elif full.shape[0] < t.shape[0]:  # received in place (`target`): a vocab's padding rows
                    t[full.shape[0]:].zero_()
                self.counts[rule.canonical] = self.counts.get(rule.canonical, 0) + 1

    def target(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """This rank's tensor for `name` when it holds the whole canonical tensor (receive in place);
        for a vocab tensor its first `shape[0]` rows (the rest is TP padding)."""
        found = self.targets.get(name, [])
        if len(found) == 1:
            spec, t = found[0]
            if spec.split_dim is None and t.dtype == dtype and t.is_contiguous():
                if tuple(t.shape) == shape:
                    return t.data
                if spec.vocab and tuple(t.shape[1:]) == shape[1:] and t.shape[0] >= shape[0]:
                    return t.data[:shape[0]]
        return None

    def expert_ids(self) -> list[int] | None:
        """The global routed-expert ids this rank's shard holds (None: the model has no routed
        experts): what `iter_hf_buckets(experts=...)` sends it."""
        if not self.m.num_experts:
            return None
        return sorted({e for name in self.targets for e in [expert_id(name)] if e is not None})

    def missing(self) -> list[str]:
        """Local tensors not written since `counts` was last cleared."""
        return sorted(set(self.targets) - set(self.counts))
