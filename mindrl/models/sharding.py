"""Canonical (layout-free) megatron state dicts, and how each rank's tensors map onto them.

The *canonical* state dict of a model uses megatron-core parameter names with global layer and
expert indices, tensors merged over TP, and the vocab unpadded (`vocab_size` rows). It is the same
for every TP/PP/EP/VPP layout, so

    shard   = slice of canonical for (this rank, this layout)     -> load_canonical()
    canonical = merge of every rank's shard                        -> merge_shards()

are all a re-shard, a checkpoint conversion or a parity test needs. Megatron's own parameter
attributes say how each tensor is split (`tensor_model_parallel`, `partition_dim`, `allreduce`
for experts); the only layout facts added here are the ones megatron keeps implicit:
- SwiGLU `linear_fc1` holds [gate; up], and each TP rank holds [gate_r; up_r];
- the vocab dimension is padded for TP;
- with PP and tied embeddings the last stage holds a copy of the word embeddings.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator

import torch
from megatron.core import parallel_state as ps

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_EXPERT = re.compile(r"\.experts\.local_experts\.(\d+)\.")
_VOCAB_NAMES = ("embedding.word_embeddings.weight", "output_layer.weight")


@dataclass
class ShardSpec:
    """Where one local tensor sits inside its canonical tensor."""

    global_name: str
    split_dim: int | None  # None: replicated over TP
    tp_rank: int
    tp_size: int
    gated: bool = False  # SwiGLU fc1: [gate; up] split separately
    vocab: bool = False  # rows = padded vocab locally, vocab_size canonically
    duplicate: bool = False  # a copy (tied embedding on the last PP stage): not merged

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _local_tensors(chunk: torch.nn.Module, lora: bool = False) -> Iterable[tuple[str, torch.Tensor, bool]]:
    """(name, tensor, is_parameter) for every parameter and persistent buffer of a chunk: the base
    model's, or with `lora` its LoRA adapters' only (mindrl.models.lora; never mixed: an adapter is
    not part of the base model's canonical state)."""
    from mindrl.models.lora import is_lora_name

    params = dict(chunk.named_parameters())
    for name, tensor in chunk.state_dict(keep_vars=True).items():
        if name.endswith("_extra_state") or tensor is None or is_lora_name(name) != lora:
            continue
        yield name, tensor, name in params


def iter_local(chunks: list[torch.nn.Module], num_experts: int | None = None
               ) -> Iterator[tuple[str, ShardSpec, torch.Tensor]]:
    """(local name, spec, tensor) for every parameter and persistent buffer of this rank's chunks."""
    for chunk, specs in zip(chunks, shard_specs(chunks, num_experts)):
        for name, tensor, _ in _local_tensors(chunk):
            yield name, specs[name], tensor


def _layer_numbers(chunk: torch.nn.Module) -> dict[int, int]:
    """local layer index -> global layer index (megatron's 1-based `layer_number` - 1)."""
    layers = chunk.decoder.layers if hasattr(chunk, "decoder") else []
    return {i: layer.layer_number - 1 for i, layer in enumerate(layers)}


def shard_specs(chunks: list[torch.nn.Module], num_experts: int | None = None,
                gated: bool = True, lora: bool = False) -> list[dict[str, ShardSpec]]:
    """For each model chunk: local name -> ShardSpec, on the current rank (`lora`: of the LoRA
    adapters instead, whose canonical names are their local names with global layer indices)."""
    tp_rank, tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    ep_rank, ep_size = ps.get_expert_model_parallel_rank(), ps.get_expert_model_parallel_world_size()
    etp_rank = ps.get_expert_tensor_parallel_rank()
    etp_size = ps.get_expert_tensor_parallel_world_size()
    local_experts = (num_experts or 0) // ep_size
    result = []
    for chunk in chunks:
        layer_map = _layer_numbers(chunk)
        specs: dict[str, ShardSpec] = {}
        for name, tensor, _ in _local_tensors(chunk, lora):
            global_name = name
            m = _LAYER.match(name)
            if m:
                global_name = f"decoder.layers.{layer_map[int(m.group(1))]}." + name[m.end():]
            is_expert = ".experts.local_experts." in name
            if is_expert:
                e = _EXPERT.search(global_name)
                global_expert = ep_rank * local_experts + int(e.group(1))
                global_name = global_name[:e.start()] + f".experts.local_experts.{global_expert}." + global_name[e.end():]
            duplicate = False
            if name == "output_layer.weight" and getattr(chunk, "share_embeddings_and_output_weights", False):
                global_name, duplicate = "embedding.word_embeddings.weight", True
            split = getattr(tensor, "tensor_model_parallel", False)
            r, s = (etp_rank, etp_size) if is_expert else (tp_rank, tp_size)
            specs[name] = ShardSpec(
                global_name=global_name,
                split_dim=int(getattr(tensor, "partition_dim", 0)) if split and s > 1 else None,
                tp_rank=r, tp_size=s,
                gated=gated and name.endswith("linear_fc1.weight") and split,
                vocab=name in _VOCAB_NAMES,
                duplicate=duplicate,
            )
        result.append(specs)
    return result


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
        for name, tensor, is_param in _local_tensors(chunk):
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
