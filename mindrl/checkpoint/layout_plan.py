"""Which slice of which canonical tensor each rank file of a layout holds, computed without processes.

It reproduces what `mindrl.models.sharding.shard_specs` reads off a live model (megatron's
`partition_dim` attributes, layer numbers, expert offsets), from names and the architecture's
split rules (`Architecture.splits`) alone, so that a converter
can write every rank's file without building a model or starting a process group. The tests
check it against `shard_specs` of real models at TP/PP/EP/VPP layouts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from mindrl.checkpoint.hf_mapping import Mapping
from mindrl.models.layout import ParallelLayout
from mindrl.models.sharding import ShardSpec

_VOCAB = ("embedding.word_embeddings.weight", "output_layer.weight")


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


def stage_layers(layout: ParallelLayout, num_layers: int) -> dict[tuple[int, int], list[int]]:
    """(pp rank, virtual stage) -> global layer indices, as megatron assigns them."""
    vpp = layout.vpp_size(num_layers)
    out: dict[tuple[int, int], list[int]] = {}
    if vpp:  # interleaved: chunk v of stage p starts at v * L/vpp + p * L/(vpp*pp)
        per = num_layers // (vpp * layout.pp)
        for p in range(layout.pp):
            for v in range(vpp):
                start = v * num_layers // vpp + p * per
                out[(p, v)] = list(range(start, start + per))
        return out
    counts = layout.num_layer_list or [num_layers // layout.pp] * layout.pp
    start = 0
    for p, n in enumerate(counts):
        out[(p, 0)] = list(range(start, start + n))
        start += n
    return out


def _spec(m: Mapping, canonical: str, tp_rank: int, tp: int, duplicate: bool = False) -> ShardSpec:
    split, gated = m.arch.split_of(canonical)  # the architecture's TP split rules
    return ShardSpec(global_name=canonical, split_dim=split if tp > 1 else None, tp_rank=tp_rank, tp_size=tp,
                     gated=gated, vocab=canonical in _VOCAB, duplicate=duplicate)


def _local_shape(shape: tuple[int, ...], spec: ShardSpec, padded_vocab: int) -> tuple[int, ...]:
    s = list(shape)
    if spec.vocab:
        s[0] = padded_vocab
    if spec.split_dim is not None:
        s[spec.split_dim] //= spec.tp_size
    return tuple(s)


def plan_ranks(m: Mapping, layout: ParallelLayout, padded_vocab: int) -> list[RankPlan]:
    """Every rank file of `layout`, in (pp, ep, tp) order, with its local tensors."""
    vpp = layout.vpp_size(m.num_layers) or 1
    layers = stage_layers(layout, m.num_layers)
    local_experts = (m.num_experts or 0) // layout.ep
    per_layer: dict[int, list] = {}
    outside: dict[str, object] = {}
    for rule in m.rules:
        if rule.canonical.startswith("decoder.layers."):
            per_layer.setdefault(int(rule.canonical.split(".")[2]), []).append(rule)
        else:
            outside[rule.canonical] = rule
    plans = []
    for p in range(layout.pp):
        for e in range(layout.ep):
            for t in range(layout.tp):
                chunks = []
                for v in range(vpp):
                    pre, post = (p == 0 and v == 0), (p == layout.pp - 1 and v == vpp - 1)
                    items: list[LocalTensor] = []

                    def add(local: str, canonical: str, shape: tuple[int, ...], duplicate: bool = False) -> None:
                        spec = _spec(m, canonical, t, layout.tp, duplicate)
                        items.append(LocalTensor(local, spec, _local_shape(shape, spec, padded_vocab)))

                    emb = outside["embedding.word_embeddings.weight"]
                    if pre:
                        add(emb.canonical, emb.canonical, emb.shape)
                    for li, g in enumerate(layers[(p, v)]):
                        for rule in per_layer[g]:
                            rest = rule.canonical[len(f"decoder.layers.{g}."):]
                            if ".experts.local_experts." in rest:
                                ge = int(rest.split(".")[3])
                                if not e * local_experts <= ge < (e + 1) * local_experts:
                                    continue
                                parts = rest.split(".")
                                parts[3] = str(ge - e * local_experts)
                                rest = ".".join(parts)
                            add(f"decoder.layers.{li}.{rest}", rule.canonical, rule.shape)
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


def layout_meta(*, iteration: int, model_type: str, layout: ParallelLayout, vocab_size: int, padded_vocab_size: int,
                vpp_chunks: bool, **extra: Any) -> dict[str, Any]:
    """The contents of `mindrl_layout.json`: what a reader needs to find and re-slice every rank file."""
    return dict(format="megatron-core legacy (mp_rank_XX[_YYY][_ZZZ]/model_optim_rng.pt)", iteration=iteration,
                model_type=model_type,
                layout=dict(tp=layout.tp, pp=layout.pp, ep=layout.ep, num_layer_list=layout.num_layer_list,
                            num_layers_per_virtual_pipeline_stage=layout.num_layers_per_virtual_pipeline_stage),
                vocab_size=vocab_size, padded_vocab_size=padded_vocab_size,
                vpp_chunks_as="model0, model1, ..." if vpp_chunks else "model", **extra)
