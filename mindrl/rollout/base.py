"""The rollout interface every engine implements: `SamplingParams` in, `RolloutOutput`s out.

Names mirror vLLM's `SamplingParams` / `CompletionOutput` (and `generate_config.sampling_config`
in mindrl/config/schema.py) so the vLLM / vllm-ascend adapters are a thin translation.

Log-prob definition (the trainer's importance ratio and KL depend on it, so it is exact):
`RolloutOutput.logprobs[t]` is `log_softmax(logits_t / temperature)[token_t]` in fp32, where
`logits_t` is the policy's logits over the real vocabulary (TP vocab padding excluded) at that
step. It is *not* renormalised by top-k / top-p / min-p: those filters change which tokens can be
drawn, but the trainer recomputes `log_softmax(logits / temperature)` on the full vocabulary, and
the two must agree for the first-step importance ratio to be exactly 1. With `temperature == 0`
(greedy) the temperature is taken as 1: `log_softmax(logits_t)[token_t]`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Literal, Mapping, Protocol, runtime_checkable

import torch

FinishReason = Literal["stop", "length"]


@dataclass
class SamplingParams:
    """How to sample; one object applies to every prompt of a `generate` call."""

    n: int = 1  # samples per prompt (GRPO's group size)
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus: keep the smallest top set with mass >= top_p (1 = off)
    top_k: int = -1  # keep the k most likely tokens (-1 or 0 = off)
    min_p: float = 0.0  # drop tokens with p < min_p * p_max (0 = off)
    max_tokens: int = 1024  # generated tokens per sample, at most
    stop: list[str] = field(default_factory=list)  # stop strings, matched on decoded text
    stop_token_ids: list[int] = field(default_factory=list)  # extra stop tokens besides EOS
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False  # keep the matched stop string in `text`
    seed: int | None = None  # None: the engine's own per-call seed
    logprobs: int | None = 1  # vLLM's top-N count; the sampled token's log-prob is always returned
    detokenize: bool = False  # fill RolloutOutput.text (needs a tokenizer)

    def check(self) -> list[str]:
        """Every problem, one line each (empty when valid)."""
        errors = []
        if self.n < 1:
            errors.append(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            errors.append(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            errors.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            errors.append(f"top_k must be -1 (off), 0 (off) or >= 1, got {self.top_k}")
        if not 0.0 <= self.min_p <= 1.0:
            errors.append(f"min_p must be in [0, 1], got {self.min_p}")
        if self.max_tokens < 1:
            errors.append(f"max_tokens must be >= 1, got {self.max_tokens}")
        if any(not s for s in self.stop):
            errors.append("stop strings must be non-empty")
        return errors

    @classmethod
    def from_config(cls, cfg: Any, **overrides: Any) -> "SamplingParams":
        """From `generate_config.sampling_config` (a dataclass or mapping); unknown keys are ignored."""
        data = dict(cfg) if isinstance(cfg, Mapping) else {f.name: getattr(cfg, f.name) for f in fields(cfg)}
        names = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data.update(overrides)
        return cls(**data)


@dataclass
class RolloutOutput:
    """One sample. `generate` returns `n` of these per prompt, grouped per prompt, in order."""

    prompt_index: int
    sample_index: int
    prompt_token_ids: list[int]
    token_ids: list[int]  # generated tokens; ends with the EOS / stop token or the token completing a stop string
    logprobs: list[float]  # one per generated token; see the module docstring for the exact definition
    finish_reason: FinishReason  # "stop": EOS, stop token or stop string; "length": max_tokens reached
    stop_reason: int | str | None = None  # the stop token id or stop string; None for EOS and "length"
    text: str | None = None  # decoded completion (trimmed at a stop string), when detokenize is on

@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a rollout engine (built-in, vLLM, vllm-ascend)."""

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> list[RolloutOutput]:
        """`params.n` samples per prompt; outputs grouped per prompt in prompt order."""

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace (some of) the policy weights with HF-named full tensors; the engine keeps its own
        shard. No-op for an engine sharing the actor's model."""

    def sleep(self) -> None:
        """Release rollout memory (KV cache, weights) while the trainer runs. No-op where unsupported."""

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Undo `sleep()`: `["weights"]` before `load_weights`, then `["kv_cache"]` before `generate`
        (None: both). No-op where unsupported."""


def group_outputs(outputs: list[RolloutOutput], n: int) -> list[list[RolloutOutput]]:
    """[prompt][sample] view of a flat `generate` result."""
    return [outputs[i:i + n] for i in range(0, len(outputs), n)]
