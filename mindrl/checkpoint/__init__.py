"""Checkpoints: the HF <-> Megatron name/layout mapping, and checkpoint I/O.

Owns: `hf_mapping` (applies an architecture's rules from `mindrl.models.registry`: HF tensor
names/layouts <-> the canonical megatron state dict of `mindrl.models.sharding`), `tensor_io`
(streaming safetensors and torch-zip readers/writers that hold one tensor at a time), `convert`
(hf->mg, mg->hf, mg->mg as used by tools/convert_ckpt.py) and `live` (loading a checkpoint into a
live model; the HF-named bucket iterator rollout engines load weights through). Which rank holds
which slice is not decided here: rank files and live ranks both follow `mindrl.models.layout`'s plan.
May import: torch, safetensors, megatron-core (only in `live`), mindrl.models.
"""
from mindrl.checkpoint.hf_mapping import Mapping, Rule

__all__ = ["Mapping", "Rule"]
