"""Canonical (layout-free) megatron state dicts, and how each rank's tensors map onto them.

The *canonical* state dict of a model uses megatron-core parameter names with global layer and
expert indices, tensors merged over TP, and the vocab unpadded (`vocab_size` rows). It is the same
for every TP/PP/EP/VPP layout, so

    shard   = slice of canonical for (this rank, this layout)     -> load_canonical()
    canonical = merge of every rank's shard                        -> merge_shards()

are all a re-shard, a checkpoint conversion or a parity test needs. Where each local tensor sits
(its `ShardSpec`) is `mindrl.models.layout`'s plan; this module cuts and merges tensors by it.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

from mindrl.models.layout import ShardSpec, iter_local, local_tensors, shard_specs


def slice_canonical(full: torch.Tensor, spec: ShardSpec, local_shape: torch.Size) -> torch.Tensor:
    """The piece of a canonical tensor that the rank described by `spec` holds."""
    t = full
    if spec.vocab:
        rows = local_shape[0] * (spec.tp_size if spec.split_dim == 0 else 1)
        if rows < t.shape[0]:
            raise ValueError(f"{spec.global_name}: vocab of {t.shape[0]} rows does not fit {rows} padded rows")
        if rows > t.shape[0]:  # megatron pads the vocab for TP; padded rows are zero and masked out
            t = torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])
    if spec.split_dim is not None:
        if spec.gated:
            gate, up = t.chunk(2, dim=spec.split_dim)
            t = torch.cat([gate.chunk(spec.tp_size, dim=spec.split_dim)[spec.tp_rank],
                           up.chunk(spec.tp_size, dim=spec.split_dim)[spec.tp_rank]], dim=spec.split_dim)
        else:
            t = t.chunk(spec.tp_size, dim=spec.split_dim)[spec.tp_rank]
    if t.shape != local_shape:
        raise ValueError(f"{spec.global_name}: canonical shape {tuple(full.shape)} gives a shard of "
                         f"{tuple(t.shape)}, but this rank's tensor is {tuple(local_shape)}")
    return t


@torch.no_grad()
def load_canonical(chunks: list[torch.nn.Module], canonical: dict[str, torch.Tensor],
                   num_experts: int | None = None, strict: bool = True) -> None:
    """Copy this rank's slices of a canonical state dict into the model chunks."""
    for name, spec, tensor in iter_local(chunks, num_experts):
        if spec.global_name not in canonical:
            if strict:
                raise KeyError(f"canonical state dict has no tensor '{spec.global_name}' (for local '{name}')")
            continue
        tensor.copy_(slice_canonical(canonical[spec.global_name], spec, tensor.shape).to(tensor.dtype))


def local_shards(chunks: list[torch.nn.Module], num_experts: int | None = None,
                 what: str = "param") -> list[tuple[dict[str, Any], torch.Tensor]]:
    """This rank's tensors with their specs, ready to send/save and later `merge_shards`.

    what: "param" (weights and buffers) or "grad" (megatron's main_grad if present, else .grad).
    """
    out = []
    for chunk, specs in zip(chunks, shard_specs(chunks, num_experts)):
        params = dict(chunk.named_parameters())
        for name, tensor, is_param in local_tensors(chunk):
            if what == "grad":
                if not is_param:
                    continue
                p = params[name]
                grad = getattr(p, "main_grad", None)
                grad = p.grad if grad is None else grad
                if grad is None:
                    continue
                tensor = grad
            out.append((specs[name].to_dict(), tensor.detach().clone().cpu()))
    return out


def merge_shards(pieces: Iterable[tuple[dict[str, Any], torch.Tensor]], vocab_size: int) -> dict[str, torch.Tensor]:
    """Canonical state dict from every rank's `local_shards` output."""
    by_name: dict[str, dict[int, torch.Tensor]] = {}
    spec_of: dict[str, ShardSpec] = {}
    for spec_dict, tensor in pieces:
        spec = ShardSpec(**spec_dict)
        if spec.duplicate:
            continue
        by_name.setdefault(spec.global_name, {})[spec.tp_rank] = tensor
        spec_of[spec.global_name] = spec
    full: dict[str, torch.Tensor] = {}
    for name, parts in by_name.items():
        spec = spec_of[name]
        if spec.split_dim is None:
            t = parts[min(parts)]
        else:
            missing = sorted(set(range(spec.tp_size)) - set(parts))
            if missing:
                raise ValueError(f"{name}: shards of TP ranks {missing} are missing")
            ordered = [parts[r] for r in range(spec.tp_size)]
            if spec.gated:
                halves = [p.chunk(2, dim=spec.split_dim) for p in ordered]
                t = torch.cat([torch.cat([h[0] for h in halves], dim=spec.split_dim),
                               torch.cat([h[1] for h in halves], dim=spec.split_dim)], dim=spec.split_dim)
            else:
                t = torch.cat(ordered, dim=spec.split_dim)
        if spec.vocab:
            t = t[:vocab_size]
        full[name] = t
    return full
