"""Rule-based rewards: scorers, the sandboxed worker pool that runs them, and weighted combinations.

This package owns everything that turns a completion (text) plus a row's labels into a float reward:
the scorer registry (``registry.SCORERS``), the scorers themselves (one small file per family), the
crash- and hang-proof worker pool (``sandbox.RewardSandbox``), config-driven weighted sums
(``combine.build_reward_fn``) and the offline CLI (``python -m mindrl.rewards.score``).

Rewards are pure functions on strings: modules here may import only the standard library,
math-verify (and what it pulls in: sympy, latex2sympy2_extended), numpy and `mindrl.utils.io` (atomic
writes). Never torch, never the rest of mindrl, so reward workers start fast and a scorer can be tested without a model.
"""
from mindrl.rewards.combine import (RewardFunction, RewardOutput, ScorerPlan, build_reward_fn,
                                    build_reward_fn_from_config, resolve_scorers)
from mindrl.rewards.registry import SCORERS, get_scorer
from mindrl.rewards.sandbox import RewardSandbox, SandboxResult

__all__ = [
    "SCORERS",
    "get_scorer",
    "RewardSandbox",
    "SandboxResult",
    "RewardFunction",
    "RewardOutput",
    "build_reward_fn",
    "build_reward_fn_from_config",
    "resolve_scorers",
    "ScorerPlan",
]
