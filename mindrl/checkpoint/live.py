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
from mindrl.models.sharding import ShardSpec, local_shards, merge_shards, shard_specs, slice_canonical


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
    without talking; each bucket is one all_gather of the pieces the ranks hold.
    """
    m = Mapping(hf_cfg)
    mine: dict[str, list[tuple[dict[str, Any], torch.Tensor]]] = {}
    for spec_d, t in _param_shards(chunks, m.num_experts):
        spec = ShardSpec(**spec_d)
        if spec.duplicate:
            continue
        mine.setdefault(spec.global_name, []).append((spec_d, t))
    world = dist.get_world_size() if dist.is_initialized() else 1
    bucket: list[str] = []
    size = 0
    for i, rule in enumerate(m.rules):
        bucket.append(rule.canonical)
        size += torch.Size(rule.shape).numel() * 4
        if size >= bucket_bytes or i == len(m.rules) - 1:
            pieces = [p for name in bucket for p in mine.get(name, [])]
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


def _param_shards(chunks: list[torch.nn.Module], num_experts: int | None) -> list[tuple[dict[str, Any], torch.Tensor]]:
    return local_shards(chunks, num_experts, what="param")


def _dedupe(pieces: Any) -> list[tuple[dict[str, Any], torch.Tensor]]:
    """Keep one copy per (tensor, TP rank): DP and EP replicas send the same piece."""
    seen, out = set(), []
    for spec_d, t in pieces:
        key = (spec_d["global_name"], spec_d["tp_rank"] if spec_d["split_dim"] is not None else 0)
        if key not in seen:
            seen.add(key)
            out.append((spec_d, t))
    return out
