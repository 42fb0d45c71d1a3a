"""The one plan of where each tensor lives: how a model is split over ranks, which layers each
pipeline stage holds, and which slice of which canonical tensor every local tensor of a rank is.

- `ParallelLayout`: the sizes (TP, PP with optional uneven layers, VPP, EP). `check()` returns every
  problem as a one-line message, before any process group exists, so the config validator and the
  checkpoint converter reject a bad layout up front with the same words. `pipeline_layout()` and
  `vpp_size()` are what megatron is told; `stage_layers()` is which global layers megatron then puts
  on each (stage, virtual stage).
- `ShardSpec`: where one local tensor sits inside its canonical tensor (see `mindrl.models.sharding`
  for the canonical state dict and the slicing/merging). Every spec is made by `_spec` from the same
  few rules: a TP split only with TP > 1; SwiGLU `linear_fc1` is [gate_r; up_r] per rank; the vocab
  dimension is padded; the last stage's copy of a tied embedding is a duplicate. Local names become
  canonical ones by `canonical_name` / `local_name` (global layer index, global expert index).
- `shard_specs(chunks)` reads the plan off a live model on the current rank: megatron's own
  attributes (`tensor_model_parallel`, `partition_dim`, `layer_number`) and parallel state. The
  weight push, checkpoint loading and saving, and evaluation use it.
- `plan_ranks(mapping, layout, padded_vocab)` computes the same plan for every rank of a layout
  without processes or a model, from the architecture's tensor list and split rules: the converter
  writes and reads rank files with it. tests/checkpoint/test_logits.py checks it against
  `shard_specs` of real models at TP/PP/EP/VPP layouts.
- `rank_dir_name`: megatron's legacy rank-file directory of a (TP, PP, EP) rank.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

if TYPE_CHECKING:
    import torch

# The config key each size is named by in check()'s messages (the training layout's; the converter's flags
# have the same names).
TRAINING_KEYS: Mapping[str, str] = {"tp": "tensor_model_parallel_size", "pp": "pipeline_model_parallel_size",
                                    "ep": "expert_model_parallel_size"}


@dataclass
class ParallelLayout:
    tp: int = 1
    pp: int = 1
    ep: int = 1
    # Uneven pipeline split: layers per PP stage, e.g. [7, 7, 8, 8, 8, 8, 8, 7]; sums to num_layers.
    num_layer_list: list[int] | None = None
    # Virtual (interleaved) pipeline: layers per virtual stage; None = no VPP.
    num_layers_per_virtual_pipeline_stage: int | None = None
    sequence_parallel: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_parallel_size(self) -> int:
        return self.tp * self.pp

    def vpp_size(self, num_layers: int) -> int | None:
        if not self.num_layers_per_virtual_pipeline_stage:
            return None
        return num_layers // (self.pp * self.num_layers_per_virtual_pipeline_stage)

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // self.model_parallel_size

    def check(self, *, num_layers: int, num_heads: int, num_kv_heads: int, num_experts: int | None = None,
              world_size: int | None = None, keys: Mapping[str, str] = TRAINING_KEYS) -> list[str]:
        """All problems with this layout for a model of this shape, one line each. `keys` names the config key
        of each size ("tp", "pp", "ep") in the messages: the training layout's by default; the rollout layout
        (validate()) passes its generate_config.infer_* keys."""
        errors = [f"{keys[name]}={getattr(self, name)} must be >= 1" for name in ("tp", "pp", "ep")
                  if getattr(self, name) < 1]
        if errors:
            return errors
        tp, pp, ep = keys["tp"], keys["pp"], keys["ep"]
        if num_heads % self.tp:
            errors.append(f"{tp}={self.tp} does not divide num_attention_heads={num_heads}")
        elif num_kv_heads % self.tp:  # one line per cause: a TP that misses the heads misses the KV heads too
            errors.append(f"{tp}={self.tp} does not divide num_key_value_heads="
                          f"{num_kv_heads} (each TP rank needs whole KV groups)")
        if self.ep > 1 and not num_experts:
            errors.append(f"{ep}={self.ep} but the model has no experts")
        if num_experts and num_experts % self.ep:
            errors.append(f"{ep}={self.ep} does not divide num_experts={num_experts}")
        if self.num_layer_list is not None:
            if len(self.num_layer_list) != self.pp:
                errors.append(f"num_layer_list has {len(self.num_layer_list)} entries but {pp}={self.pp}")
            elif sum(self.num_layer_list) != num_layers:
                errors.append(f"num_layer_list {self.num_layer_list} sums to {sum(self.num_layer_list)}, "
                              f"but the model has {num_layers} layers")
            elif min(self.num_layer_list) < 1:
                errors.append(f"num_layer_list {self.num_layer_list}: every stage needs at least one layer")
            if self.num_layers_per_virtual_pipeline_stage:
                errors.append("num_layer_list and num_layers_per_virtual_pipeline_stage cannot be combined")
        elif num_layers % self.pp:
            errors.append(f"{pp}={self.pp} does not divide num_layers={num_layers} (or give num_layer_list)")
        vps = self.num_layers_per_virtual_pipeline_stage
        if vps:
            if self.pp < 2:
                errors.append(f"num_layers_per_virtual_pipeline_stage needs {pp} >= 2")
            elif num_layers % (self.pp * vps):
                errors.append(f"num_layers={num_layers} is not divisible by {pp} "
                              f"x num_layers_per_virtual_pipeline_stage = {self.pp} x {vps}")
        if world_size is not None:
            if world_size % self.model_parallel_size:
                errors.append(f"world size {world_size} is not divisible by TP x PP = {self.model_parallel_size}")
            elif self.ep > 1 and (world_size // self.pp) % (self.ep * self.tp):
                # megatron-core lays the experts out as expert-TP x EP x PP with expert-TP = TP (mindrl
                # never sets expert_tensor_parallel_size), so the world must hold whole copies of that.
                errors.append(f"{ep}={self.ep} x {tp}={self.tp} (expert tensor parallelism is TP) does not "
                              f"divide world size / PP = {world_size // self.pp}")
        return errors

    def stage_layers(self, num_layers: int) -> dict[tuple[int, int], list[int]]:
        """(pp rank, virtual stage) -> the global layer indices megatron puts there (given
        `pipeline_layout()` and `vpp_size()`)."""
        vpp = self.vpp_size(num_layers)
        out: dict[tuple[int, int], list[int]] = {}
        if vpp:  # interleaved: chunk v of stage p starts at v * L/vpp + p * L/(vpp*pp)
            per = num_layers // (vpp * self.pp)
            for p in range(self.pp):
                for v in range(vpp):
                    start = v * num_layers // vpp + p * per
                    out[(p, v)] = list(range(start, start + per))
            return out
        counts = self.num_layer_list or [num_layers // self.pp] * self.pp
        start = 0
        for p, n in enumerate(counts):
            out[(p, 0)] = list(range(start, start + n))
            start += n
        return out

    def pipeline_layout(self, num_layers: int) -> list[list[str]] | None:
        """megatron-core `pipeline_model_parallel_layout` for an uneven split (None when even)."""
        if not self.num_layer_list or self.pp == 1:
            return None
        stages = [["decoder"] * n for n in self.num_layer_list]
        stages[0] = ["embedding"] + stages[0]
        stages[-1] = stages[-1] + ["loss"]
        return stages


# ---- where each local tensor sits in its canonical tensor ------------------------------------------
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_EXPERT = re.compile(r"\.experts\.local_experts\.(\d+)\.")
VOCAB_NAMES = ("embedding.word_embeddings.weight", "output_layer.weight")
TIED_EMBEDDING = "embedding.word_embeddings.weight"


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


def _spec(canonical: str, split_dim: int | None, tp_rank: int, tp_size: int, gated: bool,
          duplicate: bool = False) -> ShardSpec:
    """The one place a ShardSpec is made (live or planned): a split only where TP > 1, the vocab rows
    of the embedding and output layer padded."""
    return ShardSpec(global_name=canonical, split_dim=split_dim if tp_size > 1 else None, tp_rank=tp_rank,
                     tp_size=tp_size, gated=gated, vocab=canonical in VOCAB_NAMES, duplicate=duplicate)


def expert_id(name: str) -> int | None:
    """The routed-expert index in a (canonical or local) tensor name; None for a non-expert tensor."""
    e = _EXPERT.search(name)
    return None if e is None else int(e.group(1))


def canonical_name(local: str, layers: Sequence[int], first_expert: int) -> str:
    """A chunk's local tensor name -> its canonical name: local layer i is global layer `layers[i]`,
    local expert j is global expert `first_expert + j` (this EP rank's experts are consecutive)."""
    m = _LAYER.match(local)
    if m:
        local = f"decoder.layers.{layers[int(m.group(1))]}." + local[m.end():]
    e = _EXPERT.search(local)
    if e:
        local = local[:e.start()] + f".experts.local_experts.{first_expert + int(e.group(1))}." + local[e.end():]
    return local


def local_name(canonical: str, layers: Sequence[int], first_expert: int, num_local_experts: int) -> str | None:
    """The inverse of `canonical_name`: the local name on a chunk holding global `layers` and experts
    [first_expert, first_expert + num_local_experts), or None when that chunk does not hold it."""
    e = _EXPERT.search(canonical) if ".local_experts." in canonical else None
    if e:
        j = int(e.group(1)) - first_expert
        if not 0 <= j < num_local_experts:
            return None
        canonical = canonical[:e.start()] + f".experts.local_experts.{j}." + canonical[e.end():]
    m = _LAYER.match(canonical)
    if m:
        g = int(m.group(1))
        if g not in layers:
            return None
        canonical = f"decoder.layers.{layers.index(g)}." + canonical[m.end():]
    return canonical


# ---- read off a live model (the current rank) ------------------------------------------------------
def local_tensors(chunk: "torch.nn.Module", lora: bool = False) -> Iterable[tuple[str, "torch.Tensor", bool]]:
    """(name, tensor, is_parameter) for every parameter and persistent buffer of a chunk: the base
    model's, or with `lora` its LoRA adapters' only (mindrl.models.lora; never mixed: an adapter is
    not part of the base model's canonical state)."""
    from mindrl.models.lora import is_lora_name

    params = dict(chunk.named_parameters())
    for name, tensor in chunk.state_dict(keep_vars=True).items():
        if name.endswith("_extra_state") or tensor is None or is_lora_name(name) != lora:
            continue
        yield name, tensor, name in params


def iter_local(chunks: list["torch.nn.Module"], num_experts: int | None = None
               ) -> Iterator[tuple[str, ShardSpec, "torch.Tensor"]]:
    """(local name, spec, tensor) for every parameter and persistent buffer of this rank's chunks."""
    for chunk, specs in zip(chunks, shard_specs(chunks, num_experts)):
        for name, tensor, _ in local_tensors(chunk):
            yield name, specs[name], tensor


def shard_specs(chunks: list["torch.nn.Module"], num_experts: int | None = None,
                gated: bool = True, lora: bool = False) -> list[dict[str, ShardSpec]]:
    """For each model chunk: local name -> ShardSpec, on the current rank, from megatron's own
    attributes and parallel state (`lora`: of the LoRA adapters instead, whose canonical names are
    their local names with global layer indices)."""
    from megatron.core import parallel_state as ps

    tp_rank, tp_size = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_world_size()
    ep_rank, ep_size = ps.get_expert_model_parallel_rank(), ps.get_expert_model_parallel_world_size()
    etp_rank = ps.get_expert_tensor_parallel_rank()
    etp_size = ps.get_expert_tensor_parallel_world_size()
    first_expert = ep_rank * ((num_experts or 0) // ep_size)
    result = []
    for chunk in chunks:
        # megatron's 1-based `layer_number` of each local layer: the global layer index + 1
        layers = [layer.layer_number - 1 for layer in (chunk.decoder.layers if hasattr(chunk, "decoder") else [])]
        specs: dict[str, ShardSpec] = {}
        for name, tensor, _ in local_tensors(chunk, lora):
            global_name, duplicate = canonical_name(name, layers, first_expert), False
            if name == "output_layer.weight" and getattr(chunk, "share_embeddings_and_output_weights", False):
                global_name, duplicate = TIED_EMBEDDING, True
            split = getattr(tensor, "tensor_model_parallel", False)
            r, s = (etp_rank, etp_size) if expert_id(name) is not None else (tp_rank, tp_size)
            specs[name] = _spec(global_name, int(getattr(tensor, "partition_dim", 0)) if split else None, r, s,
                                gated=gated and name.endswith("linear_fc1.weight") and split, duplicate=duplicate)
        result.append(specs)
    return result


# ---- computed for every rank of a layout, without processes ----------------------------------------
@dataclass
class LocalTensor:
    name: str  # the local (per-chunk) megatron name
    spec: ShardSpec  # where it sits in the canonical tensor
    shape: tuple[int, ...]


@dataclass
class RankPlan:
    tp: int
    pp: int
    ep: int
    chunks: list[list[LocalTensor]]  # one per virtual pipeline stage

    def rel_path(self, layout: ParallelLayout) -> str:
        """megatron's legacy `get_checkpoint_name` directory for this rank."""
        return f"{rank_dir_name(self.tp, self.pp, self.ep, layout.pp, layout.ep)}/model_optim_rng.pt"

    def tensors(self) -> Iterator[tuple[int, LocalTensor]]:
        for v, chunk in enumerate(self.chunks):
            for t in chunk:
                yield v, t


def _local_shape(shape: tuple[int, ...], spec: ShardSpec, padded_vocab: int) -> tuple[int, ...]:
    s = list(shape)
    if spec.vocab:
        s[0] = padded_vocab
    if spec.split_dim is not None:
        s[spec.split_dim] //= spec.tp_size
    return tuple(s)


def plan_ranks(m: Any, layout: ParallelLayout, padded_vocab: int) -> list[RankPlan]:
    """Every rank file of `layout`, in (pp, ep, tp) order, with its local tensors. `m`: the model's
    `mindrl.checkpoint.hf_mapping.Mapping` (its canonical tensors, shapes and `arch.split_of`, the
    architecture's TP split rules). Experts are split over TP like dense layers (mindrl's training
    layouts keep megatron's expert-TP = TP)."""
    vpp = layout.vpp_size(m.num_layers) or 1
    layers = layout.stage_layers(m.num_layers)
    local_experts = (m.num_experts or 0) // layout.ep
    per_layer: dict[int, list] = {}
    outside: dict[str, Any] = {}
    for rule in m.rules:
        g = _LAYER.match(rule.canonical)
        if g:
            per_layer.setdefault(int(g.group(1)), []).append(rule)
        else:
            outside[rule.canonical] = rule
    emb = outside[TIED_EMBEDDING]
    plans = []
    for p in range(layout.pp):
        for e in range(layout.ep):
            for t in range(layout.tp):
                chunks = []
                for v in range(vpp):
                    pre, post = (p == 0 and v == 0), (p == layout.pp - 1 and v == vpp - 1)
                    items: list[LocalTensor] = []

                    def add(local: str, canonical: str, shape: tuple[int, ...], duplicate: bool = False) -> None:
                        split, gated = m.arch.split_of(canonical)
                        spec = _spec(canonical, split, t, layout.tp, gated, duplicate)
                        items.append(LocalTensor(local, spec, _local_shape(shape, spec, padded_vocab)))

                    if pre:
                        add(emb.canonical, emb.canonical, emb.shape)
                    for g in layers[(p, v)]:
                        for rule in per_layer[g]:
                            local = local_name(rule.canonical, layers[(p, v)], e * local_experts, local_experts)
                            if local is not None:  # None: a routed expert of another EP rank
                                add(local, rule.canonical, rule.shape)
                    if post:
                        norm = outside["decoder.final_layernorm.weight"]
                        add(norm.canonical, norm.canonical, norm.shape)
                        if not m.tied:
                            out = outside["output_layer.weight"]
                            add(out.canonical, out.canonical, out.shape)
                        elif not pre:  # the last stage keeps a copy of the tied embedding
                            add("output_layer.weight", emb.canonical, emb.shape, duplicate=True)
                    chunks.append(items)
                plans.append(RankPlan(t, p, e, chunks))
    return plans


def rank_dir_name(tp_rank: int, pp_rank: int, ep_rank: int, pp_size: int, ep_size: int) -> str:
    """megatron's legacy names: mp_rank_TT, plus _PPP with pipeline parallelism, plus _EEE with experts."""
    name = f"mp_rank_{tp_rank:02d}" + (f"_{pp_rank:03d}" if pp_size > 1 else "")
    return name + (f"_{ep_rank:03d}" if ep_size > 1 else "")
