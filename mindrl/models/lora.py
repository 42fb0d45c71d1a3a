"""LoRA on megatron-core's parallel linears, with peft's module names and tensors.

Targets (peft name -> megatron module, part of its output):

    q_proj, k_proj, v_proj -> self_attention.linear_qkv (column-parallel; q/k/v inside the fused output)
    o_proj                 -> self_attention.linear_proj (row-parallel)
    gate_proj, up_proj     -> mlp.linear_fc1 (column-parallel; [gate; up])
    down_proj              -> mlp.linear_fc2 (row-parallel)

Each target has peft's two matrices at peft's full shapes: A [r, in], B [out, r] (HF row order),
delta W = scaling * B @ A with scaling = alpha / r (alpha / sqrt(r) with rsLoRA). So the
*canonical* adapter tensors (`decoder.layers.{i}.<module>.lora.adapters.<target>.lora_A|lora_B`, global
layer index, merged over TP) are exactly peft's tensors under another name: no layout transform
on export. The TP slicing does the layout work (no communication for a rank's own delta shard):

- column-parallel base (q/k/v, gate/up): A replicated, B split by output rows. For q/k/v the
  local B rows are the heads of this rank's KV groups (HF orders q heads by group), and the local
  delta is interleaved per group [q_g; k_g; v_g] like megatron's fused QKV; fc1's is [gate_r; up_r].
- row-parallel base (o, down): A split by input columns, B replicated.

Communication happens on the r-wide activations only (A x), mirroring the base layer:
column: copy-to-TP (backward all-reduce) or, under sequence parallelism, an all-gather along the
sequence (backward reduce-scatter); row: all-reduce or, under SP, a reduce-scatter. Gradients of
parameters that saw only this rank's sequence shard are tagged `sequence_parallel` (megatron's
finalize_model_grads sums them over TP, as for norms); replicated/sharded tags follow megatron's
`tensor_model_parallel` attributes, so grad-norm clipping counts each element once.

A is initialised on the *full* matrix from (seed, canonical name) — peft's kaiming-uniform(a=sqrt(5))
— then sliced, so TP1 and TP2 start identical; B starts at zero (the initial policy is the base).
Adapter parameters are fp32 whatever the base dtype (the LoRA path computes in fp32 and adds its
result in the base's dtype, as peft does). `adapters_disabled(chunks)` turns every adapter off (the
reference policy: the base, no second copy of the weights).

No process group is needed to plan; `apply_lora` needs megatron's parallel state.
"""
from __future__ import annotations

import math
import re
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
from megatron.core import parallel_state as ps

from mindrl.models.hf_config import head_dim, require

# peft target -> (megatron module path inside a decoder layer, part of the fused output or None)
TARGETS: dict[str, tuple[str, str | None]] = {
    "q_proj": ("self_attention.linear_qkv", "q"),
    "k_proj": ("self_attention.linear_qkv", "k"),
    "v_proj": ("self_attention.linear_qkv", "v"),
    "o_proj": ("self_attention.linear_proj", None),
    "gate_proj": ("mlp.linear_fc1", "gate"),
    "up_proj": ("mlp.linear_fc1", "up"),
    "down_proj": ("mlp.linear_fc2", None),
}
# peft module path inside an HF decoder layer
HF_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
             "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
ROW_PARALLEL = ("self_attention.linear_proj", "mlp.linear_fc2")
# Architectures whose decoder layers are plain GQA attention + a dense SwiGLU MLP.
SUPPORTED_MODEL_TYPES = ("qwen2", "llama")


@dataclass
class LoRASpec:
    """What `actor_config.lora` asks for (rank 0: no LoRA)."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(TARGETS))
    use_rslora: bool = False

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def check(self, hf: Mapping[str, Any] | None = None) -> list[str]:
        errors = []
        if self.rank < 0:
            errors.append(f"actor_config.lora.rank: {self.rank} < 0 (0 turns LoRA off)")
        if not self.enabled:
            return errors
        unknown = [t for t in self.target_modules if t not in TARGETS]
        if unknown:
            errors.append(f"actor_config.lora.target_modules: unknown module(s) {unknown}; expected some of "
                          f"{', '.join(TARGETS)} (peft's names)")
        if not self.target_modules:
            errors.append("actor_config.lora.target_modules: empty; name at least one of " + ", ".join(TARGETS))
        if not 0.0 <= self.dropout < 1.0:
            errors.append(f"actor_config.lora.dropout: {self.dropout} not in [0, 1)")
        if hf is not None and hf.get("model_type") not in SUPPORTED_MODEL_TYPES:
            errors.append(f"actor_config.lora: model_type {hf.get('model_type')!r} is not supported (LoRA covers the "
                          f"dense GQA decoders {', '.join(SUPPORTED_MODEL_TYPES)}; LoRA on MoE experts and on MLA "
                          f"attention is not built): set actor_config.lora.rank=0 for full fine-tuning")
        return errors

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "target_modules": list(self.target_modules), "use_rslora": self.use_rslora}


def full_shapes(hf: Mapping[str, Any], target: str) -> tuple[int, int]:
    """(in, out) features of the HF linear that `target` names."""
    hidden, inter = int(require(hf, "hidden_size")), int(require(hf, "intermediate_size"))
    nh = int(require(hf, "num_attention_heads"))
    ng, d = int(hf.get("num_key_value_heads") or nh), head_dim(hf)
    in_out = {"q_proj": (hidden, nh * d), "k_proj": (hidden, ng * d), "v_proj": (hidden, ng * d),
              "o_proj": (nh * d, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
              "down_proj": (inter, hidden)}[target]
    return in_out


def canonical_names(layer: int, target: str) -> tuple[str, str]:
    module = TARGETS[target][0]
    base = f"decoder.layers.{layer}.{module}.lora.adapters.{target}"
    return base + ".lora_A", base + ".lora_B"


def peft_names(layer: int, target: str) -> tuple[str, str]:
    base = f"base_model.model.model.layers.{layer}.{HF_PARENT[target]}.{target}"
    return base + ".lora_A.weight", base + ".lora_B.weight"


def init_lora_A(seed: int, name: str, rank: int, fan_in: int) -> torch.Tensor:
    """peft's default A init (kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in))) on the full matrix,
    from a generator seeded by (seed, canonical name): independent of the layout and of the RNG state."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(rank, fan_in, generator=g, dtype=torch.float64) * 2 - 1).mul_(bound).float()


class Adapter(torch.nn.Module):
    """One target's local shards: lora_A [r, in_local], lora_B [out_local, r] (fp32)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.lora_A = torch.nn.Parameter(a)
        self.lora_B = torch.nn.Parameter(b)


class LoRALayer(torch.nn.Module):
    """The adapters of one megatron linear, and the delta they add to its output (a forward hook)."""

    def __init__(self, base: torch.nn.Module, module: str, adapters: dict[str, Adapter], spec: LoRASpec,
                 qkv_rows: tuple[int, int, int, int] | None) -> None:
        super().__init__()
        self.row = module in ROW_PARALLEL
        self.module_name = module
        self.adapters = torch.nn.ModuleDict(adapters)
        self.scaling = spec.scaling
        self.dropout = torch.nn.Dropout(spec.dropout) if spec.dropout > 0 else torch.nn.Identity()
        self.qkv_rows = qkv_rows  # (local groups, q rows per group, k rows, v rows) for linear_qkv
        self.enabled = True
        # Not a submodule attribute: `base` owns this layer (base.lora), not the other way round.
        self._base_ref = [base]

    def _sp(self) -> bool:
        # Read at call time: the built-in rollout engine switches SP off on the base for decoding.
        return bool(getattr(self._base_ref[0], "sequence_parallel", False))

    def delta(self, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        from megatron.core import tensor_parallel as tpm

        xs = self.dropout(x.to(torch.float32))
        names = list(self.adapters)
        sp = self._sp()
        if self.row:  # A split by input, B replicated: u = sum over TP of A_r x_r
            ad = self.adapters[names[0]]
            u = torch.nn.functional.linear(xs, ad.lora_A)
            u = tpm.reduce_scatter_to_sequence_parallel_region(u) if sp else tpm.reduce_from_tensor_model_parallel_region(u)
            return (torch.nn.functional.linear(u, ad.lora_B) * self.scaling).to(out_dtype)
        # Column: A replicated (one fused matmul for every target of this layer), B split by output.
        a = torch.cat([self.adapters[n].lora_A for n in names]) if len(names) > 1 else self.adapters[names[0]].lora_A
        u = torch.nn.functional.linear(xs, a)
        if sp:
            u = tpm.gather_from_sequence_parallel_region(u, tensor_parallel_output_grad=True)
        else:
            u = tpm.copy_to_tensor_model_parallel_region(u)
        pieces = dict(zip(names, u.chunk(len(names), dim=-1)))
        parts = {TARGETS[n][1]: torch.nn.functional.linear(pieces[n], self.adapters[n].lora_B) * self.scaling
                 for n in names}
        lead = u.shape[:-1]
        if self.qkv_rows is not None:
            groups, *rows = self.qkv_rows
            per_group = [parts[p].reshape(*lead, groups, n) if p in parts else u.new_zeros(*lead, groups, n)
                         for p, n in zip("qkv", rows)]
            return torch.cat(per_group, dim=-1).reshape(*lead, -1).to(out_dtype)
        half = next(iter(parts.values())).shape[-1]
        return torch.cat([parts.get(p, u.new_zeros(*lead, half)) for p in ("gate", "up")], dim=-1).to(out_dtype)


def _hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    layer: LoRALayer = module.lora
    if not layer.enabled:
        return output
    x = args[0] if args else kwargs["input_"]
    out, bias = output
    return out + layer.delta(x, out.dtype), bias


def _unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def _submodule(layer: torch.nn.Module, path: str) -> torch.nn.Module:
    for part in path.split("."):
        layer = getattr(layer, part)
    return layer


def apply_lora(chunks: list[torch.nn.Module], spec: LoRASpec, hf: Mapping[str, Any], seed: int) -> None:
    """Freeze every base parameter of `chunks` and add fp32 adapters on the targets (in place).
    Call after any half-precision wrapping and before DDP (which then sees only the adapters)."""
    from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

    errors = spec.check(hf)
    if errors:
        raise ValueError("; ".join(errors))
    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    nh = int(require(hf, "num_attention_heads"))
    ng, d = int(hf.get("num_key_value_heads") or nh), head_dim(hf)
    for chunk in chunks:
        model = _unwrap(chunk)
        model.requires_grad_(False)
        for layer in model.decoder.layers:
            index = layer.layer_number - 1
            by_module: dict[str, dict[str, Adapter]] = {}
            for target in spec.target_modules:
                module, _ = TARGETS[target]
                fan_in, fan_out = full_shapes(hf, target)
                name_a, _ = canonical_names(index, target)
                a = init_lora_A(seed, name_a, spec.rank, fan_in)
                b = torch.zeros(fan_out, spec.rank)
                row = module in ROW_PARALLEL
                if row:
                    a = a.chunk(tp, dim=1)[tp_rank].contiguous()
                else:
                    b = b.chunk(tp, dim=0)[tp_rank].contiguous()
                ad = Adapter(a.to(_device(model)), b.to(_device(model)))
                sp = bool(getattr(model.config, "sequence_parallel", False)) and tp > 1
                if row:
                    set_tensor_model_parallel_attributes(ad.lora_A, True, 1, 1)
                    setattr(ad.lora_B, "sequence_parallel", sp)  # its grad saw this rank's tokens only
                else:
                    set_tensor_model_parallel_attributes(ad.lora_B, True, 0, 1)
                    setattr(ad.lora_A, "sequence_parallel", sp)
                by_module.setdefault(module, {})[target] = ad
            for module, adapters in by_module.items():
                base = _submodule(layer, module)
                qkv = (ng // tp, nh // ng * d, d, d) if module.endswith("linear_qkv") else None
                base.lora = LoRALayer(base, module, adapters, spec, qkv)
                base.register_forward_hook(_hook, with_kwargs=True)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def lora_layers(chunks: list[torch.nn.Module]) -> Iterator[tuple[int, LoRALayer]]:
    """(global layer index, LoRA layer) for every adapted linear of this rank's chunks."""
    for chunk in chunks:
        model = _unwrap(chunk)
        for layer in getattr(getattr(model, "decoder", None), "layers", []):
            for module in ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2"):
                try:
                    base = _submodule(layer, module)
                except AttributeError:
                    continue
                if isinstance(getattr(base, "lora", None), LoRALayer):
                    yield layer.layer_number - 1, base.lora


def has_lora(chunks: list[torch.nn.Module]) -> bool:
    return next(lora_layers(chunks), None) is not None


def is_lora_name(name: str) -> bool:
    """Whether a (local or canonical) state-dict name is an adapter tensor."""
    return ".lora.adapters." in name and name.endswith((".lora_A", ".lora_B"))


@contextmanager
def adapters_disabled(chunks: list[torch.nn.Module]) -> Iterator[None]:
    """Every adapter of `chunks` off inside the block: the forward is the base model's."""
    layers = [layer for _, layer in lora_layers(chunks)]
    saved = [layer.enabled for layer in layers]
    try:
        for layer in layers:
            layer.enabled = False
        yield
    finally:
        for layer, was in zip(layers, saved):
            layer.enabled = was


def local_adapter_shards(chunks: list[torch.nn.Module], what: str = "param"
                         ) -> list[tuple[dict[str, Any], torch.Tensor]]:
    """(ShardSpec dict, tensor) of every local adapter tensor, for `sharding.merge_shards`.
    what: "param", or "grad" (megatron's main_grad where DDP made one, else .grad)."""
    from mindrl.models.layout import ShardSpec

    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    out = []
    for index, layer in lora_layers(chunks):
        for target, ad in layer.adapters.items():
            name_a, name_b = canonical_names(index, target)
            for name, t, split in ((name_a, ad.lora_A, 1 if layer.row else None),
                                   (name_b, ad.lora_B, None if layer.row else 0)):
                spec = ShardSpec(global_name=name, split_dim=split if tp > 1 else None, tp_rank=tp_rank, tp_size=tp)
                if what == "grad":
                    grad = getattr(t, "main_grad", None)
                    t = t.grad if grad is None else grad
                    if t is None:
                        continue
                out.append((spec.to_dict(), t.detach()))
    return out


@torch.no_grad()
def load_adapters(chunks: list[torch.nn.Module], canonical: Mapping[str, torch.Tensor]) -> None:
    """Copy this rank's slices of canonical adapter tensors into the live adapters (every one must be there)."""
    from mindrl.models.layout import ShardSpec
    from mindrl.models.sharding import slice_canonical

    params = {}
    for index, layer in lora_layers(chunks):
        for target, ad in layer.adapters.items():
            name_a, name_b = canonical_names(index, target)
            params[name_a], params[name_b] = ad.lora_A, ad.lora_B
    for spec_dict, t in local_adapter_shards(chunks):
        spec = ShardSpec(**spec_dict)
        if spec.global_name not in canonical:
            raise KeyError(f"adapter tensor '{spec.global_name}' missing (targets or layers differ)")
        params[spec.global_name].copy_(slice_canonical(canonical[spec.global_name].float(), spec, t.shape))


def canonical_delta(adapters: Mapping[str, torch.Tensor], layer: int, module: str, hf: Mapping[str, Any],
                    scaling: float) -> torch.Tensor | None:
    """The full (canonical layout) delta W of one megatron linear from canonical adapters, fp32;
    None when no target of it is adapted. Used to merge for weight pushes and exports."""
    deltas = {}
    for target, (mod, part) in TARGETS.items():
        if mod != module:
            continue
        name_a, name_b = canonical_names(layer, target)
        if name_a in adapters:
            deltas[part] = scaling * adapters[name_b].float() @ adapters[name_a].float()
    if not deltas:
        return None
    if module.endswith("linear_qkv"):
        nh = int(require(hf, "num_attention_heads"))
        ng, d = int(hf.get("num_key_value_heads") or nh), head_dim(hf)
        hidden = int(require(hf, "hidden_size"))
        rows = {"q": nh // ng * d, "k": d, "v": d}
        return torch.cat([deltas[p].reshape(ng, n, hidden) if p in deltas else torch.zeros(ng, n, hidden)
                          for p, n in rows.items()], dim=1).reshape(-1, hidden)
    if module.endswith("linear_fc1"):
        shape = next(iter(deltas.values())).shape
        return torch.cat([deltas.get(p, torch.zeros(shape)) for p in ("gate", "up")])
    return deltas[None]


_CANONICAL_LINEAR = re.compile(r"^decoder\.layers\.(\d+)\.(self_attention\.linear_qkv|self_attention\.linear_proj|"
                               r"mlp\.linear_fc1|mlp\.linear_fc2)\.weight$")


@torch.no_grad()
def merge_canonical_(name: str, tensor: torch.Tensor, adapters: Mapping[str, torch.Tensor], hf: Mapping[str, Any],
                     scaling: float) -> bool:
    """W += delta W in place for a canonical base tensor (summed in fp32, cast once); False if not adapted."""
    m = _CANONICAL_LINEAR.match(name)
    if m is None:
        return False
    delta = canonical_delta(adapters, int(m.group(1)), m.group(2), hf, scaling)
    if delta is None:
        return False
    tensor.copy_((tensor.float() + delta.to(tensor.device)).to(tensor.dtype))
    return True


def gather_canonical_adapters(chunks: list[torch.nn.Module]) -> tuple[dict[str, torch.Tensor], float]:
    """Every rank's adapters merged to canonical (peft-shaped) tensors on every rank, and the scaling.
    Collective over the world (adapters are small: one object all-gather)."""
    import torch.distributed as dist

    from mindrl.models.sharding import merge_shards

    pieces = [(d, t.cpu()) for d, t in local_adapter_shards(chunks)]
    if dist.is_initialized() and dist.get_world_size() > 1:
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, pieces)
        pieces = [p for ps_ in everyone for p in ps_]
    layer = next((layer for _, layer in lora_layers(chunks)), None)
    scales: list[Any] = [None if layer is None else layer.scaling]
    if dist.is_initialized() and dist.get_world_size() > 1:
        scales = [None] * dist.get_world_size()
        dist.all_gather_object(scales, None if layer is None else layer.scaling)
    scaling = next((x for x in scales if x is not None), 0.0)
    return merge_shards(pieces, vocab_size=0), float(scaling)


def hf_delta(adapters: Mapping[str, torch.Tensor], hf_name: str, scaling: float) -> torch.Tensor | None:
    """delta W (fp32) for an HF tensor name (`model.layers.{i}.self_attn.q_proj.weight`), or None."""
    parts = hf_name.split(".")
    if len(parts) != 6 or parts[0] != "model" or parts[1] != "layers" or parts[-1] != "weight":
        return None
    layer, target = int(parts[2]), parts[4]
    if target not in TARGETS:
        return None
    name_a, name_b = canonical_names(layer, target)
    if name_a not in adapters:
        return None
    return scaling * adapters[name_b].float() @ adapters[name_a].float()


__all__ = ["HF_PARENT", "LoRALayer", "LoRASpec", "SUPPORTED_MODEL_TYPES", "TARGETS", "adapters_disabled",
           "apply_lora", "canonical_delta", "canonical_names", "gather_canonical_adapters", "merge_canonical_", "full_shapes", "has_lora", "hf_delta",
           "init_lora_A", "is_lora_name", "load_adapters", "local_adapter_shards", "lora_layers", "peft_names"]
