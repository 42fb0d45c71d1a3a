"""Training checkpoints: model, optimizer, LR scheduler, RNG states, data position, step.

Layout (megatron's legacy per-rank layout, so `tools/convert_ckpt.py --load-model-type mg` reads
the model part directly):

    <actor_config.save, default <output_dir>/checkpoints>/
        latest_checkpointed_iteration.txt
        iter_0000010/
            mp_rank_00[_000][_000]/model_optim_rng.pt # written by data-parallel rank 0 of each model shard
                                                       # (with LoRA: the adapters, their optimizer state and
                                                       # `lora_specs`; the frozen base is not saved)
            rng/rank_00000.pt                          # every rank: its RNG states
            trainer_state.json                         # step, data position, layout, architecture

Atomic: every rank writes into `iter_XXXXXXX.tmp`, then rank 0 renames it and rewrites the
`latest` file (itself atomically). A crash mid-save leaves the previous checkpoint as latest.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import get_cuda_rng_tracker

from mindrl.checkpoint.convert import LAYOUT_FILE, layout_meta
from mindrl.models.layout import rank_dir_name, shard_specs
from mindrl.models.lora import has_lora, is_lora_name
from mindrl.utils.io import atomic_write_text

LATEST = "latest_checkpointed_iteration.txt"


class CheckpointMismatch(ValueError):
    """A checkpoint written for another architecture or parallel layout."""


def _my_rank_dir() -> str:
    return rank_dir_name(ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
                         ps.get_expert_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size(),
                         ps.get_expert_model_parallel_world_size())


def latest_step(ckpt_root: Path) -> int | None:
    path = ckpt_root / LATEST
    if not path.is_file():
        return None
    text = path.read_text().strip()
    return int(text) if text.isdigit() else None


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "tracker": get_cuda_rng_tracker().get_states()}


def write_export_meta(ckpt_root: Path, step: int, plan: Any, layout: Any, tokenizer_dir: str | None) -> None:
    """What tools/convert_ckpt.py needs to read `ckpt_root` as a megatron checkpoint (mg -> hf):
    `mindrl_layout.json` (layout, iteration) and `hf/` (config.json and the tokenizer files)."""
    hf_dir = ckpt_root / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir and Path(tokenizer_dir).is_dir():
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".pt")) and f.name != "config.json":
                shutil.copy2(f, hf_dir / f.name)
    atomic_write_text(hf_dir / "config.json", json.dumps(plan.hf, indent=2) + "\n")
    meta = layout_meta(iteration=step, model_type=plan.hf.get("model_type"), layout=layout,
                       vocab_size=plan.vocab_size, padded_vocab_size=plan.padded_vocab_size,
                       vpp_chunks=bool(plan.config.virtual_pipeline_model_parallel_size), written_by="mindrl trainer")
    atomic_write_text(ckpt_root / LAYOUT_FILE, json.dumps(meta, indent=2) + "\n")


def save_checkpoint(ckpt_root: Path, step: int, model: Any, trainer_state: dict[str, Any], keep_last: int = 2,
                    tokenizer_dir: str | None = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    final = ckpt_root / f"iter_{step:07d}"
    tmp = ckpt_root / f"iter_{step:07d}.tmp"
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    dist.barrier()
    if ps.get_data_parallel_rank(with_context_parallel=True) == 0:
        state: dict[str, Any] = {"iteration": step, "checkpoint_version": 3.0}
        chunks = model.unwrapped
        lora = has_lora(chunks)
        for i, chunk in enumerate(chunks):
            sd = chunk.state_dict()
            if lora:  # the base is frozen and comes from actor_config.load (or the seed): adapters only
                sd = {k: v for k, v in sd.items() if is_lora_name(k)}
            state["model" if len(chunks) == 1 else f"model{i}"] = sd
        if lora:  # where each local adapter tensor sits in the canonical (peft-shaped) one, for export
            state["lora_specs"] = [{k: s.to_dict() for k, s in specs.items()}
                                   for specs in shard_specs(chunks, lora=True)]
        state["optimizer"] = model.optimizer.state_dict()
        state["opt_param_scheduler"] = model.scheduler.state_dict() if model.scheduler is not None else None
        (tmp / _my_rank_dir()).mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp / _my_rank_dir() / "model_optim_rng.pt")
    torch.save(_rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
    dist.barrier()
    if rank == 0:
        atomic_write_text(tmp / "trainer_state.json", json.dumps(trainer_state, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(ckpt_root / LATEST, str(step))
        write_export_meta(ckpt_root, step, model.plan, model.plan.layout, tokenizer_dir)
        old = sorted(p for p in ckpt_root.glob("iter_*") if p.is_dir() and not p.name.endswith(".tmp"))
        for stale in old[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    return final


def load_checkpoint(ckpt_root: Path, step: int, model: Any, expected: dict[str, Any]) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG into this rank; return the trainer state.

    `expected` holds the architecture and layout of the running job; a checkpoint written with
    another one is refused before anything is loaded.
    """
    ckpt = ckpt_root / f"iter_{step:07d}"
    state_path = ckpt / "trainer_state.json"
    if not state_path.is_file():
        raise CheckpointMismatch(f"{ckpt}: trainer_state.json missing; not a mindrl training checkpoint")
    trainer_state = json.loads(state_path.read_text())
    for key in ("architecture", "layout", "world_size", "lora"):
        if trainer_state.get(key) != expected.get(key):
            raise CheckpointMismatch(
                f"{ckpt} was written with {key}={trainer_state.get(key)} but this run has {key}={expected.get(key)}; "
                f"use a new output_dir, or re-shard the weights with tools/convert_ckpt.py and start from them "
                f"with actor_config.load")
    path = ckpt / _my_rank_dir() / "model_optim_rng.pt"
    if not path.is_file():
        raise CheckpointMismatch(f"{path} missing: the checkpoint does not match this layout")
    state = torch.load(path, map_location="cpu", weights_only=False)
    chunks = model.unwrapped
    lora = has_lora(chunks)
    if lora != ("lora_specs" in state):
        raise CheckpointMismatch(f"{path}: the checkpoint {'holds' if 'lora_specs' in state else 'has no'} LoRA "
                                 f"adapters but this run {'uses' if lora else 'does not use'} actor_config.lora")
    for i, chunk in enumerate(chunks):
        sd = state["model"] if len(chunks) == 1 else state[f"model{i}"]
        if not lora:
            chunk.load_state_dict(sd)
            continue
        missing, unexpected = chunk.load_state_dict(sd, strict=False)
        missing = [k for k in missing if is_lora_name(k)]
        if missing or unexpected:
            raise CheckpointMismatch(f"{path}: adapters differ from this run's (missing {missing[:3]}, "
                                     f"unexpected {list(unexpected)[:3]}); same actor_config.lora?")
    model.optimizer.load_state_dict(state["optimizer"])
    if model.scheduler is not None and state.get("opt_param_scheduler") is not None:
        model.scheduler.load_state_dict(state["opt_param_scheduler"])
    rng = torch.load(ckpt / "rng" / f"rank_{dist.get_rank():05d}.pt", map_location="cpu", weights_only=False)
    torch.set_rng_state(rng["torch"])
    get_cuda_rng_tracker().set_states(rng["tracker"])
    return trainer_state
