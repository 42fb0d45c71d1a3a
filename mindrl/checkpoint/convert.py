"""HF <-> Megatron checkpoint conversion, streaming: one tensor in memory at a time.

A *source* yields canonical tensors (see `mindrl.models.sharding`) one by one; a *sink* writes each
where it belongs. hf->mg = HFSource -> MegatronSink, mg->hf = MegatronSource -> HFSink, mg->mg =
MegatronSource -> MegatronSink. Every input problem is raised (CheckpointError / ValueError naming
the tensor or file) while building the source and the sink's plan, before a byte is written.
Output goes to a temporary directory next to `save_dir`, renamed into place at the end.

Megatron format written: megatron-core's legacy per-rank layout (what MindSpeed writes):
    latest_checkpointed_iteration.txt  ("1")
    iter_0000001/mp_rank_{tp:02d}[_{pp:03d}][_{ep:03d}]/model_optim_rng.pt
        {"model": state_dict} or {"model0": ..., "model1": ...} with VPP; "checkpoint_version": 3.0
    mindrl_layout.json                 (arch, layout, dtypes: lets mg->hf / mg->mg read it back)
    hf/                                (config.json, tokenizer and generation files, for mg->hf)
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

from mindrl.checkpoint.hf_mapping import FP32_TENSORS, Mapping, ignored_hf_tensor
from mindrl.checkpoint.tensor_io import (CheckpointError, LazyTensor, SafetensorsDir, SafetensorsWriter, TorchFile,
                                         TorchFileWriter, flatten)
from mindrl.models import ARCHITECTURES, DTYPES, ParallelLayout, load_hf_config, plan_model
from mindrl.models.layout import RankPlan, ShardSpec, plan_ranks
from mindrl.models.sharding import merge_shards, slice_canonical

log = logging.getLogger(__name__)
LAYOUT_FILE = "mindrl_layout.json"
ITERATION = 1
HF_SHARD_BYTES = 5 * 1024**3
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")


# ---- sources ---------------------------------------------------------------------------------------
class HFSource:
    """Canonical tensors from an HF safetensors directory, in file order (each HF tensor read once)."""

    def __init__(self, load_dir: Path, mapping: Mapping) -> None:
        self.dir, self.m = Path(load_dir), mapping
        self.st = SafetensorsDir(self.dir)
        entries = self.st.entries
        for name, e in entries.items():
            if name in mapping.by_hf or ignored_hf_tensor(mapping, name):
                continue
            if mapping.tied and name == "lm_head.weight":
                continue  # some tied checkpoints carry a copy; the embedding is the weight
            raise CheckpointError(f"unexpected tensor '{name}' in {e.file} (not part of a {mapping.model_type} model "
                                  f"with {mapping.num_layers} layers as config.json describes)")
        for rule in mapping.rules:
            for name, shape in zip(rule.hf, rule.hf_shapes):
                if name not in entries:
                    raise CheckpointError(f"missing tensor '{name}' in {self.dir} (needed for {rule.canonical})")
                if entries[name].shape != shape:
                    raise CheckpointError(f"tensor '{name}' in {entries[name].file} has shape {list(entries[name].shape)}, "
                                          f"config.json implies {list(shape)}")

    def dtype(self, canonical: str) -> torch.dtype:
        d = self.st.entries[self.m.by_canonical[canonical].hf[0]].dtype
        return torch.bfloat16 if d.itemsize == 1 and d.is_floating_point else d  # fp8 is dequantised

    def _read(self, name: str) -> torch.Tensor:
        t = self.st.read(name)
        scale = name.replace(".weight", ".weight_scale_inv")
        if t.dtype.itemsize == 1 and t.is_floating_point() and scale in self.st.entries:
            t = dequantize_fp8(t, self.st.read(scale))
        return t

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        pending: dict[str, dict[str, torch.Tensor]] = {}
        for path in self.st.files:
            names = sorted((n for n, e in self.st.entries.items() if e.file == path and n in self.m.by_hf),
                           key=lambda n: self.st.entries[n].start)
            for name in tqdm(names, desc=path.name, unit="tensor", leave=False):
                rule = self.m.by_hf[name]
                parts = pending.setdefault(rule.canonical, {})
                parts[name] = self._read(name)
                if len(parts) == len(rule.hf):  # fused tensors wait for all their pieces
                    del pending[rule.canonical]
                    yield rule.canonical, self.m.to_canonical(rule, [parts[n] for n in rule.hf])
        self.st.close()


def dequantize_fp8(w: torch.Tensor, scale_inv: torch.Tensor, block: int = 128) -> torch.Tensor:
    """DeepSeek-V3's released fp8 weights: 128x128 blocks, each with one fp32 inverse scale."""
    s = scale_inv.float().repeat_interleave(block, 0).repeat_interleave(block, 1)[: w.shape[0], : w.shape[1]]
    return (w.float() * s).to(torch.bfloat16)


class MegatronSource:
    """Canonical tensors from a checkpoint this module wrote (reads mindrl_layout.json), in rule order."""

    def __init__(self, load_dir: Path) -> None:
        self.dir = Path(load_dir)
        meta_path = self.dir / LAYOUT_FILE
        if not meta_path.exists():
            raise CheckpointError(f"{meta_path} not found: --load-dir must be a Megatron checkpoint written by "
                                  f"tools/convert_ckpt.py (it records the layout and architecture there)")
        self.meta = json.loads(meta_path.read_text())
        self.hf_cfg = load_hf_config(self.dir / "hf")
        self.m = Mapping(self.hf_cfg)
        self.layout = ParallelLayout(**self.meta["layout"])
        iter_dir = self.dir / f"iter_{self.meta['iteration']:07d}"
        self.pieces: dict[str, list[tuple[TorchFile, LazyTensor, ShardSpec]]] = {}
        self.files: list[TorchFile] = []
        for plan in plan_ranks(self.m, self.layout, self.meta["padded_vocab_size"]):
            path = iter_dir / plan.rel_path(self.layout)
            if not path.exists():
                raise CheckpointError(f"{path}: rank file missing (layout {self.meta['layout']})")
            f = TorchFile(path)
            self.files.append(f)
            stored = dict(flatten(f.obj))
            for key, lt in _local_keys(plan):
                if key not in stored or not isinstance(stored[key], LazyTensor):
                    raise CheckpointError(f"{path}: tensor '{key}' missing")
                if stored[key].shape != lt.shape:
                    raise CheckpointError(f"{path}: tensor '{key}' has shape {list(stored[key].shape)}, expected {list(lt.shape)}")
                if not lt.spec.duplicate:
                    self.pieces.setdefault(lt.spec.global_name, []).append((f, stored[key], lt.spec))

    def dtype(self, canonical: str) -> torch.dtype:
        return self.pieces[canonical][0][1].dtype

    def read(self, canonical: str) -> torch.Tensor:
        pieces = self.pieces[canonical]
        seen: set[int] = set()  # replicas (over EP, and over TP for unsplit tensors) are read once
        chosen = []
        for f, lazy, spec in pieces:
            r = spec.tp_rank if spec.split_dim is not None else 0
            if r not in seen:
                seen.add(r)
                chosen.append((spec.to_dict(), f.read(lazy)))
        return merge_shards(chosen, self.m.vocab_size)[canonical]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for rule in tqdm(self.m.rules, desc="reading megatron shards", unit="tensor", leave=False):
            yield rule.canonical, self.read(rule.canonical)
        for f in self.files:
            f.close()


def layout_meta(*, iteration: int, model_type: str, layout: ParallelLayout, vocab_size: int, padded_vocab_size: int,
                vpp_chunks: bool, **extra: Any) -> dict[str, Any]:
    """The contents of `mindrl_layout.json`: what a reader needs to find and re-slice every rank file
    (`MegatronSource` plans them again from the layout with `plan_ranks`)."""
    return dict(format="megatron-core legacy (mp_rank_XX[_YYY][_ZZZ]/model_optim_rng.pt)", iteration=iteration,
                model_type=model_type,
                layout=dict(tp=layout.tp, pp=layout.pp, ep=layout.ep, num_layer_list=layout.num_layer_list,
                            num_layers_per_virtual_pipeline_stage=layout.num_layers_per_virtual_pipeline_stage),
                vocab_size=vocab_size, padded_vocab_size=padded_vocab_size,
                vpp_chunks_as="model0, model1, ..." if vpp_chunks else "model", **extra)


def _local_keys(plan: RankPlan) -> Iterator[tuple[str, Any]]:
    multi = len(plan.chunks) > 1
    for v, lt in plan.tensors():
        yield f"model{v if multi else ''}.{lt.name}", lt


# ---- sinks -----------------------------------------------------------------------------------------
def _cast(canonical: str, t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is None or not t.is_floating_point() or canonical.endswith(FP32_TENSORS):
        return t
    return t.to(dtype)


class MegatronSink:
    def __init__(self, out: Path, m: Mapping, layout: ParallelLayout, padded_vocab: int,
                 dtype_of: Any, params_dtype: torch.dtype | None, hf_files_from: Path) -> None:
        self.m, self.params_dtype = m, params_dtype
        iter_dir = out / f"iter_{ITERATION:07d}"
        self.writers: list[TorchFileWriter] = []
        self.consumers: dict[str, list[tuple[TorchFileWriter, str, Any]]] = {}
        multi = False
        for plan in plan_ranks(m, layout, padded_vocab):
            multi = len(plan.chunks) > 1
            obj: dict[str, Any] = {f"model{v}" if multi else "model": {} for v in range(len(plan.chunks))}
            keys = list(_local_keys(plan))
            for key, lt in keys:
                chunk, local = key.split(".", 1)
                dtype = _cast(lt.spec.global_name, torch.empty(0, dtype=dtype_of(lt.spec.global_name)), params_dtype).dtype
                obj[chunk][local] = (dtype, lt.shape)
            obj.update(checkpoint_version=3.0, iteration=ITERATION)
            writer = TorchFileWriter(iter_dir / plan.rel_path(layout), obj)
            self.writers.append(writer)
            for key, lt in keys:
                self.consumers.setdefault(lt.spec.global_name, []).append((writer, key, lt))
        (out / "latest_checkpointed_iteration.txt").write_text(str(ITERATION))
        (out / LAYOUT_FILE).write_text(json.dumps(layout_meta(
            iteration=ITERATION, model_type=m.model_type, layout=layout, vocab_size=m.vocab_size,
            padded_vocab_size=padded_vocab, vpp_chunks=multi,
            params_dtype=str(params_dtype) if params_dtype else "as in the source"), indent=2) + "\n")
        copy_hf_files(hf_files_from, out / "hf")

    def put(self, canonical: str, t: torch.Tensor) -> None:
        t = _cast(canonical, t, self.params_dtype)
        for writer, key, lt in self.consumers.pop(canonical):
            writer.write(key, slice_canonical(t, lt.spec, torch.Size(lt.shape)))

    def close(self) -> None:
        if self.consumers:
            raise AssertionError(f"canonical tensors never written: {sorted(self.consumers)[:5]}")
        for w in self.writers:
            w.close()


class HFSink:
    """safetensors shards of at most `shard_bytes` (one tensor may exceed it), in rule order, + index."""

    def __init__(self, out: Path, m: Mapping, dtype_of: Any, params_dtype: torch.dtype | None,
                 hf_files_from: Path, shard_bytes: int = HF_SHARD_BYTES) -> None:
        self.m, self.out, self.params_dtype = m, out, params_dtype
        shards: list[list[tuple[str, torch.dtype, tuple[int, ...]]]] = [[]]
        size = 0
        for rule in m.rules:
            dtype = _cast(rule.canonical, torch.empty(0, dtype=dtype_of(rule.canonical)), params_dtype).dtype
            for name, shape in zip(rule.hf, rule.hf_shapes):
                nbytes = torch.Size(shape).numel() * dtype.itemsize
                if shards[-1] and size + nbytes > shard_bytes:
                    shards.append([])
                    size = 0
                shards[-1].append((name, dtype, shape))
                size += nbytes
        n = len(shards)
        self.names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self.shards = shards
        self.total = sum(torch.Size(s).numel() * d.itemsize for sh in shards for _, d, s in sh)
        self.writer: SafetensorsWriter | None = None
        self.next_shard = 0
        copy_hf_files(hf_files_from, out)
        if m.tied and (out / "config.json").exists():
            pass  # config.json says tie_word_embeddings; no lm_head is written

    def put(self, canonical: str, t: torch.Tensor) -> None:
        rule = self.m.by_canonical[canonical]
        for name, piece in zip(rule.hf, self.m.to_hf(rule, _cast(canonical, t, self.params_dtype))):
            if self.writer is None or self.writer.done:
                self.writer = SafetensorsWriter(self.out / self.names[self.next_shard], self.shards[self.next_shard])
                self.next_shard += 1
            self.writer.write(name, piece)

    def close(self) -> None:
        if self.next_shard != len(self.shards) or (self.writer and not self.writer.done):
            raise AssertionError("HF shards incomplete")
        if len(self.names) > 1:
            weight_map = {name: fn for fn, sh in zip(self.names, self.shards) for name, _, _ in sh}
            (self.out / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": self.total}, "weight_map": weight_map}, indent=2) + "\n")


def copy_hf_files(src: Path, dst: Path) -> None:
    """config.json, tokenizer and generation files: every small non-weight file of the model directory."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(Path(src).iterdir()):
        if p.is_file() and not p.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(p, dst / p.name)


# ---- driver ----------------------------------------------------------------------------------------
def _check_save_dir(save_dir: Path, load_dir: Path, overwrite: bool) -> None:
    if save_dir.resolve() == load_dir.resolve():
        raise CheckpointError(f"--save-dir {save_dir} is the same as --load-dir")
    if save_dir.exists() and (not save_dir.is_dir() or any(save_dir.iterdir())) and not overwrite:
        raise CheckpointError(f"--save-dir {save_dir} exists and is not empty (pass --overwrite to replace it)")


def convert(*, model_type: str, load_type: str, save_type: str, load_dir: str | Path, save_dir: str | Path,
            tp: int = 1, pp: int = 1, ep: int = 1, num_layer_list: list[int] | None = None,
            vpp_layers: int | None = None, params_dtype: str | None = None, overwrite: bool = False,
            hf_shard_bytes: int = HF_SHARD_BYTES, lora_format: str | None = None, lora_merge: bool = False,
            base_dir: str | Path | None = None) -> None:
    """`lora_format="peft"` / `lora_merge`: `load_dir` is a LoRA training checkpoint root (adapters only);
    write an HF PEFT folder, or a merged HF checkpoint whose base comes from `base_dir` (HF) or else from
    the megatron checkpoint the run loaded its base from (`actor_config.load`, recorded in the checkpoint)."""
    from mindrl.checkpoint.lora_io import LoRACheckpoint, MergedSource, is_lora_checkpoint, write_peft_adapter

    load_dir, save_dir = Path(load_dir), Path(save_dir)
    lora = load_type == "mg" and load_dir.is_dir() and is_lora_checkpoint(load_dir)
    if lora_format not in (None, "peft"):
        raise CheckpointError(f"--lora-format {lora_format!r}: only 'peft' is supported")
    if lora_format and lora_merge:
        raise CheckpointError("--lora-format peft and --lora-merge are exclusive (an adapter folder, or merged weights)")
    if (lora_format or lora_merge or base_dir) and not lora:
        raise CheckpointError(f"--lora-format/--lora-merge/--base-dir need --load-model-type mg and a LoRA training "
                              f"checkpoint root as --load-dir ({load_dir} is not one)")
    if lora and not (lora_format or lora_merge):
        raise CheckpointError(f"{load_dir} holds LoRA adapters only (trained with actor_config.lora): export them with "
                              f"--lora-format peft (an HF PEFT folder) or --lora-merge (a merged HF checkpoint)")
    if lora and save_type != "hf":
        raise CheckpointError("a LoRA checkpoint exports to --save-model-type hf (a PEFT folder or merged weights)")
    if lora:
        ckpt = LoRACheckpoint(load_dir)
        if ckpt.hf_cfg.get("model_type") != model_type:
            raise CheckpointError(f"--model-type-hf {model_type} but {load_dir} holds a {ckpt.hf_cfg.get('model_type')!r} model")
        _check_save_dir(save_dir, load_dir, overwrite)
        adapters = ckpt.adapters()
        if lora_format == "peft":
            tmp = save_dir.parent / f".{save_dir.name}.tmp-{os.getpid()}"
            try:
                write_peft_adapter(tmp, ckpt.spec, adapters, ckpt.hf_cfg, base_model_name_or_path=ckpt.base_load)
                _replace(tmp, save_dir)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp)
            return
        if base_dir is None and not ckpt.base_load:
            raise CheckpointError(f"{load_dir}: the run's base was not loaded from a checkpoint (actor_config.load unset); "
                                  f"pass the base model with --base-dir <HF dir>")
        base: Any = (HFSource(Path(base_dir), Mapping(ckpt.hf_cfg)) if base_dir is not None
                     else MegatronSource(Path(ckpt.base_load)))
        _write(MergedSource(base, adapters, ckpt.spec), save_dir, "hf", ckpt.root / "hf", None,
               DTYPES[params_dtype] if params_dtype else None, hf_shard_bytes)
        return
    if load_type not in ("hf", "mg") or save_type not in ("hf", "mg") or (load_type, save_type) == ("hf", "hf"):
        raise CheckpointError(f"unsupported conversion {load_type} -> {save_type} (use hf->mg, mg->hf or mg->mg)")
    if not load_dir.is_dir():
        raise CheckpointError(f"--load-dir {load_dir} is not a directory")
    _check_save_dir(save_dir, load_dir, overwrite)
    dtype = DTYPES[params_dtype] if params_dtype else None
    if load_type == "hf":
        hf_cfg = load_hf_config(load_dir)
        hf_files = load_dir
    else:
        hf_cfg = load_hf_config(load_dir / "hf") if (load_dir / "hf").exists() else {}
        hf_files = load_dir / "hf"
    if hf_cfg.get("model_type") != model_type:
        if model_type not in ARCHITECTURES:
            raise CheckpointError(f"unknown --model-type-hf {model_type!r}; supported: {', '.join(ARCHITECTURES)}")
        if hf_cfg:
            raise CheckpointError(f"--model-type-hf {model_type} but {load_dir} holds a {hf_cfg.get('model_type')!r} model")
    mapping = Mapping(hf_cfg) if load_type == "hf" else None
    source: Any = HFSource(load_dir, mapping) if load_type == "hf" else MegatronSource(load_dir)
    layout = None
    if save_type == "mg":
        layout = ParallelLayout(tp=tp, pp=pp, ep=ep, num_layer_list=num_layer_list,
                                num_layers_per_virtual_pipeline_stage=vpp_layers)
    _write(source, save_dir, save_type, hf_files, layout, dtype, hf_shard_bytes)


def _write(source: Any, save_dir: Path, save_type: str, hf_files: Path, layout: ParallelLayout | None,
           dtype: torch.dtype | None, hf_shard_bytes: int) -> None:
    """Stream `source` into a new `save_dir` (written aside, then renamed into place)."""
    mapping = source.m
    tmp = save_dir.parent / f".{save_dir.name}.tmp-{os.getpid()}"
    try:
        if save_type == "mg":
            assert layout is not None
            plan = plan_model(mapping.cfg, layout, dtype="fp32")  # validates the layout (raises ValueError)
            tmp.mkdir(parents=True)
            sink: Any = MegatronSink(tmp, mapping, layout, plan.padded_vocab_size, source.dtype, dtype, hf_files)
        else:
            tmp.mkdir(parents=True)
            sink = HFSink(tmp, mapping, source.dtype, dtype, hf_files, hf_shard_bytes)
        for canonical, tensor in source:
            sink.put(canonical, tensor)
        sink.close()
        _replace(tmp, save_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _replace(tmp: Path, save_dir: Path) -> None:
    if save_dir.exists():
        old = save_dir.parent / f".{save_dir.name}.old-{os.getpid()}"
        save_dir.rename(old)
        tmp.rename(save_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(save_dir)
