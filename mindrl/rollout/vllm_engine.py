"""vLLM / vllm-ascend adapter behind the same `RolloutEngine` interface.

NOT VERIFIED ON HARDWARE: no GPU or NPU (and no vllm install: it pins a different torch) was
available to this project's sessions. Written against vLLM's public offline API (`vllm.LLM`,
`vllm.SamplingParams`, `LLM.generate` with token prompts, `LLM.sleep` / `LLM.wake_up`,
`LLM.collective_rpc`); run it on hardware before trusting it and update docs/hardware.md.

Log-probs: vLLM must be started with `logprobs_mode="processed_logprobs"` (the default here) so
its sampled-token log-prob is taken after temperature; it is then equal to ours
(`log_softmax(logits / T)`, see base.py) only while top-k / top-p / min-p are off, because vLLM's
"processed" values are also renormalised by those filters. The trainer recomputes them anyway.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Iterable

import torch

from mindrl.rollout.base import RolloutOutput, SamplingParams


def _require_vllm() -> Any:
    if importlib.util.find_spec("vllm") is None:
        raise ImportError("generate_config.engine=vllm needs the 'vllm' package (on Ascend: 'vllm' plus "
                          "'vllm-ascend'), which is not installed in this environment. Install a vLLM built "
                          "for your torch/CUDA (or CANN) stack, or use engine=builtin.")
    import vllm

    return vllm


class VllmRolloutEngine:
    """Wraps `vllm.LLM`. `llm_kwargs` go to `vllm.LLM(...)` (model path, tensor_parallel_size, dtype,
    max_model_len, gpu_memory_utilization, ...)."""

    def __init__(self, model: str, **llm_kwargs: Any) -> None:
        vllm = _require_vllm()
        llm_kwargs.setdefault("enable_sleep_mode", True)
        llm_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        self._vllm = vllm
        self.llm = vllm.LLM(model=model, **llm_kwargs)

    def _params(self, p: SamplingParams) -> Any:
        return self._vllm.SamplingParams(
            n=p.n, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, min_p=p.min_p, max_tokens=p.max_tokens,
            stop=list(p.stop) or None, stop_token_ids=list(p.stop_token_ids) or None, ignore_eos=p.ignore_eos,
            include_stop_str_in_output=p.include_stop_str_in_output, seed=p.seed,
            logprobs=0,  # 0: only the sampled token's log-prob (what the trainer needs)
            detokenize=p.detokenize or bool(p.stop))

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> list[RolloutOutput]:
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids]
        results = self.llm.generate(prompts, sampling_params=self._params(params), use_tqdm=False)
        out: list[RolloutOutput] = []
        for pidx, (ids, request) in enumerate(zip(prompt_token_ids, results)):
            for sidx, c in enumerate(sorted(request.outputs, key=lambda c: c.index)):
                logprobs = [float(step[tok].logprob) for tok, step in zip(c.token_ids, c.logprobs or [])]
                reason = c.finish_reason if c.finish_reason in ("stop", "length") else "length"  # "abort"
                out.append(RolloutOutput(prompt_index=pidx, sample_index=sidx, prompt_token_ids=list(ids),
                                         token_ids=list(c.token_ids), logprobs=logprobs, finish_reason=reason,
                                         stop_reason=c.stop_reason, text=c.text if params.detokenize else None))
        return out

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """HF-named tensors (convert megatron's canonical names with mindrl.checkpoint first)."""
        weights = list(named_tensors)
        self.llm.collective_rpc(lambda worker: worker.model_runner.model.load_weights(weights=weights))

    update_weights = load_weights

    def sleep(self) -> None:
        self.llm.sleep(level=1)  # offload weights, drop the KV cache

    def wake_up(self) -> None:
        self.llm.wake_up()
