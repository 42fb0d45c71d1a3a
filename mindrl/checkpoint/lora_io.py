"""LoRA adapters on disk: the trainer's adapter-only checkpoints, HF PEFT folders, and merged exports.

- `LoRACheckpoint(root)`: a training checkpoint root written with `actor_config.lora` (every rank file
  holds its adapters and `lora_specs`; `trainer_state.json` the LoRA config and `base_load`, the
  megatron checkpoint the frozen base came from). `.adapters()` merges the rank files into the
  canonical adapter tensors (peft's shapes, mindrl.models.lora).
- `read_peft_adapter(dir)` / `write_peft_adapter(dir, spec, adapters)`: peft's `adapter_config.json`
  + `adapter_model.safetensors` (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`).
  Canonical adapters *are* peft's tensors (q/k/v and gate/up are separate there as here), so the
  translation is a rename; the fused-QKV / fc1 layout only matters when merging (`lora.canonical_delta`).
- `MergedSource(base, adapters, spec)`: canonical base tensors + scaling * B @ A (fp32 sum, cast once),
  for `convert`'s HF writer (`--lora-merge`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from mindrl.checkpoint.tensor_io import CheckpointError
from mindrl.models.lora import (HF_PARENT, TARGETS, LoRASpec, canonical_names, merge_canonical_, peft_names)
from mindrl.models.sharding import merge_shards

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_PEFT_NAME = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.(lora_A|lora_B)\.weight$")


def _latest(root: Path) -> int | None:
    latest = root / "latest_checkpointed_iteration.txt"
    text = latest.read_text().strip() if latest.is_file() else ""
    return int(text) if text.isdigit() else None


def is_lora_checkpoint(root: str | Path) -> bool:
    """Whether `root` is a trainer checkpoint root whose latest checkpoint holds LoRA adapters only."""
    root = Path(root)
    step = _latest(root)
    if step is None:
        return False
    state = root / f"iter_{step:07d}" / "trainer_state.json"
    return state.is_file() and bool(json.loads(state.read_text()).get("lora"))


class LoRACheckpoint:
    """The latest adapter-only checkpoint under a training checkpoint root."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        step = _latest(self.root)
        if step is None:
            raise CheckpointError(f"{self.root}: no latest_checkpointed_iteration.txt (not a training checkpoint root)")
        self.dir = self.root / f"iter_{step:07d}"
        state = json.loads((self.dir / "trainer_state.json").read_text())
        if not state.get("lora"):
            raise CheckpointError(f"{self.dir} holds a full model, not LoRA adapters (trained without actor_config.lora)")
        self.step = step
        self.spec = LoRASpec(**state["lora"])
        self.base_load: str | None = state.get("base_load")
        from mindrl.models import load_hf_config

        self.hf_cfg = dict(load_hf_config(self.root / "hf"))

    def adapters(self) -> dict[str, torch.Tensor]:
        pieces = []
        files = sorted(self.dir.glob("mp_rank_*/model_optim_rng.pt"))
        if not files:
            raise CheckpointError(f"{self.dir}: no rank files (mp_rank_*/model_optim_rng.pt)")
        for path in files:
            state = torch.load(path, map_location="cpu", weights_only=False)
            if "lora_specs" not in state:
                raise CheckpointError(f"{path}: no lora_specs (not written by a LoRA run)")
            for i, specs in enumerate(state["lora_specs"]):
                sd = state["model"] if len(state["lora_specs"]) == 1 else state[f"model{i}"]
                pieces += [(spec, sd[name]) for name, spec in specs.items()]
        full = merge_shards(pieces, vocab_size=0)
        check_adapters(full, self.spec, self.hf_cfg, str(self.dir))
        return full


def check_adapters(adapters: dict[str, torch.Tensor], spec: LoRASpec, hf: dict[str, Any], where: str) -> None:
    """Every (layer, target) of `spec` present with peft's shapes for this model, nothing else."""
    from mindrl.models.lora import full_shapes

    want = {}
    for layer in range(int(hf["num_hidden_layers"])):
        for target in spec.target_modules:
            fan_in, fan_out = full_shapes(hf, target)
            a, b = canonical_names(layer, target)
            want[a], want[b] = (spec.rank, fan_in), (fan_out, spec.rank)
    missing, extra = sorted(set(want) - set(adapters)), sorted(set(adapters) - set(want))
    if missing or extra:
        raise CheckpointError(f"{where}: adapters do not match r={spec.rank}, target_modules={spec.target_modules} "
                              f"on {hf['num_hidden_layers']} layers (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, shape in want.items():
        if tuple(adapters[name].shape) != shape:
            raise CheckpointError(f"{where}: {name} has shape {list(adapters[name].shape)}, expected {list(shape)}")


# ---- peft folders -----------------------------------------------------------------------------------
def write_peft_adapter(out: str | Path, spec: LoRASpec, adapters: dict[str, torch.Tensor], hf: dict[str, Any],
                       base_model_name_or_path: str | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors, as peft's `save_pretrained` writes them."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer in range(int(hf["num_hidden_layers"])):
        for target in spec.target_modules:
            for canonical, peft in zip(canonical_names(layer, target), peft_names(layer, target)):
                tensors[peft] = adapters[canonical].float().contiguous()
    save_file(tensors, str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "use_rslora": spec.use_rslora,
        "target_modules": sorted(spec.target_modules), "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
        "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False,
    }
    (out / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def publish_peft_adapter(out: str | Path, spec: LoRASpec, adapters: dict[str, torch.Tensor], hf: dict[str, Any],
                         base_model_name_or_path: str | None = None) -> Path:
    """`write_peft_adapter` into `out`, atomically: the folder is written beside it and renamed into place,
    so a reader (vLLM's LoRA loader) never sees half a folder. `out` must not exist yet."""
    import os
    import shutil

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists (an adapter folder is published once)")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_peft_adapter(tmp, spec, adapters, hf, base_model_name_or_path)
    os.replace(tmp, out)
    return out


def read_peft_adapter(folder: str | Path, hf: dict[str, Any]) -> tuple[LoRASpec, dict[str, torch.Tensor]]:
    """A peft LoRA folder as (spec, canonical adapters); what mindrl cannot express is refused by name."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / PEFT_CONFIG).is_file():
        raise CheckpointError(f"{folder}: no {PEFT_CONFIG} (not a peft adapter folder)")
    cfg = json.loads((folder / PEFT_CONFIG).read_text())
    if cfg.get("peft_type") != "LORA":
        raise CheckpointError(f"{folder}/{PEFT_CONFIG}: peft_type={cfg.get('peft_type')!r}, only LORA is supported")
    for key, ok in (("bias", lambda v: v in (None, "none")), ("use_dora", lambda v: not v),
                    ("fan_in_fan_out", lambda v: not v), ("modules_to_save", lambda v: not v),
                    ("rank_pattern", lambda v: not v), ("alpha_pattern", lambda v: not v),
                    ("layers_to_transform", lambda v: v is None)):
        if not ok(cfg.get(key)):
            raise CheckpointError(f"{folder}/{PEFT_CONFIG}: {key}={cfg.get(key)!r} is not supported")
    targets = cfg.get("target_modules")
    targets = [targets] if isinstance(targets, str) else list(targets or [])
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise CheckpointError(f"{folder}/{PEFT_CONFIG}: target_modules {unknown} are not LoRA targets mindrl "
                              f"supports ({', '.join(TARGETS)})")
    spec = LoRASpec(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]), dropout=float(cfg.get("lora_dropout", 0.0)),
                    target_modules=targets, use_rslora=bool(cfg.get("use_rslora", False)))
    path = folder / PEFT_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {PEFT_WEIGHTS} (adapter_model.bin is not read; re-save with safetensors)")
    adapters = {}
    for name, t in load_file(str(path)).items():
        m = _PEFT_NAME.match(name.replace(".default.", "."))
        if m is None or m.group(3) not in TARGETS or HF_PARENT[m.group(3)] != m.group(2):
            raise CheckpointError(f"{path}: unexpected tensor '{name}'")
        a, b = canonical_names(int(m.group(1)), m.group(3))
        adapters[a if m.group(4) == "lora_A" else b] = t.float()
    check_adapters(adapters, spec, hf, str(path))
    return spec, adapters


def read_adapter(path: str | Path, hf: dict[str, Any]) -> tuple[LoRASpec, dict[str, torch.Tensor]]:
    """A peft folder or a mindrl LoRA training checkpoint root, as (spec, canonical adapters)."""
    path = Path(path)
    if (path / PEFT_CONFIG).is_file():
        return read_peft_adapter(path, hf)
    if is_lora_checkpoint(path):
        ckpt = LoRACheckpoint(path)
        return ckpt.spec, ckpt.adapters()
    raise CheckpointError(f"{path}: neither a peft adapter folder ({PEFT_CONFIG}) nor a mindrl LoRA checkpoint root")


class MergedSource:
    """A base source's canonical tensors with the adapters merged in (W + scaling * B @ A)."""

    def __init__(self, base: Any, adapters: dict[str, torch.Tensor], spec: LoRASpec) -> None:
        self.base, self.adapters, self.spec = base, adapters, spec
        self.m = base.m
        self.merged = 0

    def dtype(self, canonical: str) -> torch.dtype:
        return self.base.dtype(canonical)

    def _base_in_rule_order(self) -> Iterator[tuple[str, torch.Tensor]]:
        if hasattr(self.base, "read"):  # MegatronSource: already in rule order
            yield from self.base
            return
        # HFSource yields in file order; the HF writer takes rule order: read each rule's tensors directly.
        for rule in self.m.rules:
            yield rule.canonical, self.m.to_canonical(rule, [self.base._read(n) for n in rule.hf])
        self.base.st.close()

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, t in self._base_in_rule_order():
            t = t.clone()
            self.merged += merge_canonical_(name, t, self.adapters, self.m.cfg, self.spec.scaling)
            yield name, t


__all__ = ["LoRACheckpoint", "MergedSource", "PEFT_CONFIG", "PEFT_WEIGHTS", "check_adapters", "is_lora_checkpoint",
           "publish_peft_adapter", "read_adapter", "read_peft_adapter", "write_peft_adapter"]
