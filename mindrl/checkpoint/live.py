"""Checkpoints and a live, sharded megatron model (inside its process groups).

- `load_megatron_checkpoint(chunks, dir)`: this rank's slices of a converted checkpoint, whatever
  layout the checkpoint was written at (tensors are merged from its rank files and re-sliced for
  this rank with `mindrl.models.sharding`).
- `iter_hf_buckets(chunks, hf_cfg)`: HF-named full tensors in size-bounded buckets, gathered over
  TP/PP/EP; every rank gets every bucket (rollout engines call `load_weights(bucket)` with them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping as TMapping

import torch
import torch.distributed as dist

from mindrl.checkpoint.convert import MegatronSource
from mindrl.checkpoint.hf_mapping import Mapping
from mindrl.models.sharding import ShardSpec, merge_shards, shard_specs, slice_canonical


@torch.no_grad()
def load_megatron_checkpoint(chunks: list[torch.nn.Module], ckpt_dir: str | Path) -> None:
    """Copy this rank's slices of a tools/convert_ckpt.py checkpoint into `chunks` (any layout)."""
    source = MegatronSource(Path(ckpt_dir))
    specs = shard_specs(chunks, source.m.num_experts)
    cache: dict[str, torch.Tensor] = {}
    for chunk, chunk_specs in zip(chunks, specs):
        for name, tensor in chunk.state_dict(keep_vars=True).items():
            if name.endswith("_extra_state") or tensor is None:
                continue
            spec = chunk_specs[name]
            if spec.global_name not in source.pieces:
                raise KeyError(f"{ckpt_dir}: checkpoint has no tensor '{spec.global_name}' (for local '{name}')")
            if spec.global_name not in cache:
                cache.clear()  # one canonical tensor in memory at a time (tied copies read it twice)
                cache[spec.global_name] = source.read(spec.global_name)
            tensor.copy_(slice_canonical(cache[spec.global_name], spec, tensor.shape).to(tensor.dtype))
    for f in source.files:
        f.close()


def iter_hf_buckets(chunks: list[torch.nn.Module], hf_cfg: TMapping[str, Any],
                    bucket_bytes: int = 512 * 1024**2) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """HF-named, full (unsharded, vocab unpadded) tensors in buckets of about `bucket_bytes`.

    Collective: every rank of the world must iterate it to the end, in step. Buckets follow the
    mapping's rule order, which every rank knows from the config alone, so ranks agree on them
    without talking; each bucket is one all_gather of the pieces the ranks hold. Only the first
    data-parallel copy of a piece is sent (the first expert-data-parallel copy for experts), and
    only the current bucket's pieces are copied: peak extra memory is about one bucket (twice:
    the gathered pieces and the merged tensors).
    """
    m = Mapping(hf_cfg)
    mine: dict[str, list[tuple[dict[str, Any], torch.Tensor]]] = {}
    sender = _first_copies()
    for chunk, specs in zip(chunks, shard_specs(chunks, m.num_experts)):
        for name, t in chunk.state_dict(keep_vars=True).items():
            if name.endswith("_extra_state") or t is None:
                continue
            spec = specs[name]
            if spec.duplicate or not sender(".experts.local_experts." in name):
                continue
            mine.setdefault(spec.global_name, []).append((spec.to_dict(), t))
    world = dist.get_world_size() if dist.is_initialized() else 1
    bucket: list[str] = []
    size = 0
    for i, rule in enumerate(m.rules):
        bucket.append(rule.canonical)
        size += torch.Size(rule.shape).numel() * 4
        if size >= bucket_bytes or i == len(m.rules) - 1:
            pieces = [(d, t.detach().cpu() if world > 1 else t.detach()) for name in bucket for d, t in mine.get(name, [])]
            if world > 1:
                gathered: list[Any] = [None] * world
                dist.all_gather_object(gathered, pieces)
                pieces = _dedupe(p for g in gathered for p in g)
            full = merge_shards(pieces, m.vocab_size)
            out = []
            for name in bucket:
                r = m.by_canonical[name]
                out += list(zip(r.hf, m.to_hf(r, full[name])))
            yield out
            bucket, size = [], 0


def _first_copies() -> Any:
    """is_expert -> whether this rank sends its copy (data-parallel replicas hold the same pieces)."""
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return lambda is_expert: True
    dense = ps.get_data_parallel_rank() == 0
    expert = ps.get_expert_data_parallel_rank() == 0
    return lambda is_expert: expert if is_expert else dense


class HFShardLoader:
    """Loads HF-named full tensors (from `iter_hf_buckets`) into this rank's shard of `chunks`.

    Built and called inside the target model's parallel state (its TP/EP ranks decide the slices).
    HF tensors that together make one canonical tensor (q/k/v, gate/up) may arrive in any order
    and any buckets; the canonical tensor is assembled and copied when its last piece arrives.
    `counts` records how often each local tensor was written (a push must write each exactly once).
    """

    def __init__(self, chunks: list[torch.nn.Module], hf_cfg: TMapping[str, Any]) -> None:
        self.m = Mapping(hf_cfg)
        self.targets: dict[str, list[tuple[ShardSpec, torch.Tensor]]] = {}
        for chunk, specs in zip(chunks, shard_specs(chunks, self.m.num_experts)):
            for name, t in chunk.state_dict(keep_vars=True).items():
                if name.endswith("_extra_state") or t is None:
                    continue
                spec = specs[name]
                key = "embedding.word_embeddings.weight" if spec.duplicate else spec.global_name
                self.targets.setdefault(key, []).append((spec, t))
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self.counts: dict[str, int] = {}

    @torch.no_grad()
    def load(self, named_tensors: Any) -> None:
        for hf_name, tensor in named_tensors:
            rule = self.m.by_hf.get(hf_name)
            if rule is None:
                raise KeyError(f"'{hf_name}' is not a tensor of this {self.m.model_type} model")
            got = self.pending.setdefault(rule.canonical, {})
            got[hf_name] = tensor
            if len(got) < len(rule.hf):
                continue
            del self.pending[rule.canonical]
            full = self.m.to_canonical(rule, [got[n] for n in rule.hf])
            for spec, t in self.targets.get(rule.canonical, []):  # experts of other EP ranks: none here
                t.copy_(slice_canonical(full, spec, t.shape).to(t.dtype))
                self.counts[rule.canonical] = self.counts.get(rule.canonical, 0) + 1

    def missing(self) -> list[str]:
        """Local tensors not written since `counts` was last cleared."""
        return sorted(set(self.targets) - set(self.counts))
def _dedupe(pieces: Any) -> list[tuple[dict[str, Any], torch.Tensor]]:
    """Keep one copy per (tensor, TP rank): DP and EP replicas send the same piece."""
    seen, out = set(), []
    for spec_d, t in pieces:
        key = (spec_d["global_name"], spec_d["tp_rank"] if spec_d["split_dim"] is not None else 0)
        if key not in seen:
            seen.add(key)
            out.append((spec_d, t))
    return out
