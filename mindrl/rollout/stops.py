"""When a sample is finished: EOS, stop token ids, stop strings, max_tokens — vLLM's rules.

- EOS (unless `ignore_eos`): finish_reason "stop", stop_reason None; the EOS token is kept in
  `token_ids` (the trainer learns to emit it).
- a `stop_token_ids` token: "stop", stop_reason = that id; kept in `token_ids`.
- a stop string, matched on decoded text after every token: "stop", stop_reason = the string.
  `token_ids` end with the token that completed the string (every token that produced text is
  kept, so the trainer scores exactly what was sampled); `text` is cut before the string (or
  after it with `include_stop_str_in_output`), as vLLM does.
- `max_tokens` generated: "length".

Stop strings decode only a tail window (the longest stop string's length + 4 tokens) each step,
so matching costs O(1) per token instead of re-decoding the whole completion. This assumes every
token decodes to at least one character, true for byte-level BPE except partial UTF-8 sequences.
"""
from __future__ import annotations

from typing import Any, Callable

from mindrl.rollout.base import SamplingParams


class StopChecker:
    def __init__(self, params: SamplingParams, eos_token_ids: list[int],
                 decode: Callable[[list[int]], str] | None) -> None:
        self.eos = set() if params.ignore_eos else set(eos_token_ids)
        self.stop_ids = set(params.stop_token_ids)
        self.strings = list(params.stop)
        self.include = params.include_stop_str_in_output
        self.max_tokens = params.max_tokens
        self.decode = decode
        if self.strings and decode is None:
            raise ValueError("stop strings need a tokenizer to decode the completion")
        self.window = max((len(s) for s in self.strings), default=0) + 4

    def check(self, generated: list[int]) -> tuple[str, Any] | None:
        """(finish_reason, stop_reason) once `generated` (just extended by one token) is done."""
        last = generated[-1]
        if last in self.eos:
            return ("stop", None)
        if last in self.stop_ids:
            return ("stop", last)
        if self.strings:
            tail = self.decode(generated[-self.window:])  # type: ignore[misc]
            for s in self.strings:
                if s in tail:
                    return ("stop", s)
        if len(generated) >= self.max_tokens:
            return ("length", None)
        return None

    def text(self, tokens: list[int], stop_reason: Any) -> str | None:
        """The decoded completion, cut at a matched stop string."""
        if self.decode is None:
            return None
        text = self.decode(tokens)
        if isinstance(stop_reason, str):
            at = text.find(stop_reason)
            if at >= 0:
                text = text[:at + (len(stop_reason) if self.include else 0)]
        return text
