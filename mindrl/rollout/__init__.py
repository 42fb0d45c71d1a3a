"""Rollout engines behind one interface (`base.RolloutEngine`): the built-in megatron-core engine
(every backend; `builtin.py`) and the vLLM 0.32 adapter where installed (`vllm_engine.py`, with the
supported versions and vLLM's in-process weight-update engine in `vllm_support.py`);
the rollout layout and its parallel state (`parallel.py`); the runner that pushes weights from the
training layout and splits prompts over rollout replicas (`runner.py`); and `build_rollout`
(`factory.py`), the trainer's one call. See docs/rollout.md. Pick an engine with
`generate_config.engine` through `ROLLOUT_ENGINES`.
May import: torch, megatron-core, mindrl.backends, mindrl.models, mindrl.checkpoint.
"""
from mindrl.rollout.base import RolloutEngine, RolloutOutput, SamplingParams, group_outputs
from mindrl.rollout.builtin import BuiltinRolloutEngine
from mindrl.rollout.vllm_engine import VllmRolloutEngine

# name -> engine class; every class satisfies the RolloutEngine protocol (tests/rollout check it).
# mindrl.config.validate.ENGINE_PACKAGES lists the same names with the packages each needs.
ROLLOUT_ENGINES: dict[str, type[RolloutEngine]] = {"builtin": BuiltinRolloutEngine, "vllm": VllmRolloutEngine}

from mindrl.rollout.factory import build_rollout  # noqa: E402  (needs ROLLOUT_ENGINES defined)
from mindrl.rollout.runner import RolloutRunner  # noqa: E402

__all__ = ["BuiltinRolloutEngine", "ROLLOUT_ENGINES", "RolloutEngine", "RolloutOutput", "RolloutRunner",
           "SamplingParams", "VllmRolloutEngine", "build_rollout", "group_outputs"]
