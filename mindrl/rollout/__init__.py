"""Rollout engines behind one interface (`base.RolloutEngine`): the built-in megatron-core engine
(every backend; `builtin.py`) and the vLLM / vllm-ascend adapter where installed (`vllm_engine.py`).
See docs/rollout.md. Pick one with `generate_config.engine` through `ROLLOUT_ENGINES`.
May import: torch, megatron-core, mindrl.backends, mindrl.models, mindrl.checkpoint.
"""
from mindrl.rollout.base import RolloutEngine, RolloutOutput, SamplingParams, group_outputs
from mindrl.rollout.builtin import BuiltinRolloutEngine
from mindrl.rollout.vllm_engine import VllmRolloutEngine

ROLLOUT_ENGINES: dict[str, type] = {"builtin": BuiltinRolloutEngine, "vllm": VllmRolloutEngine}

__all__ = ["BuiltinRolloutEngine", "ROLLOUT_ENGINES", "RolloutEngine", "RolloutOutput", "SamplingParams",
           "VllmRolloutEngine", "group_outputs"]
