"""`ParallelLayout`: how a model is split over ranks (TP, PP with optional uneven layers, VPP, EP).

`check()` returns every problem as a one-line message, before any process group exists, so the
config validator and the checkpoint converter reject a bad layout up front with the same words.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

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

    def pipeline_layout(self, num_layers: int) -> list[list[str]] | None:
        """megatron-core `pipeline_model_parallel_layout` for an uneven split (None when even)."""
        if not self.num_layer_list or self.pp == 1:
            return None
        stages = [["decoder"] * n for n in self.num_layer_list]
        stages[0] = ["embedding"] + stages[0]
        stages[-1] = stages[-1] + ["loss"]
        return stages
