"""vLLM (CUDA) / vllm-ascend (NPU) adapter behind the `RolloutEngine` interface, colocated:
one in-process `vllm.LLM` on every rank, in the rollout layout, weights pushed from the actor.

NOT VERIFIED ON HARDWARE: no GPU or NPU with vllm was available to this project's sessions (vllm
pins its own torch and its wheel is too large to carry). Written against vllm 0.11.0 /
vllm-ascend 0.11.0rc0 (pinned in setup.py's gpu / npu extras and docs/hardware.md). The calls it
makes are checked by API-contract tests with a recording stand-in for `vllm.LLM`
(tests/rollout/test_vllm_contract.py): construction arguments, the per-step call order, every
parameter pushed exactly once, and HF names that vLLM's own `load_weights` accepts.

Construction (every rank; `external_launcher` makes each group of `tensor_parallel_size`
consecutive ranks of the existing torch.distributed world one vLLM instance, i.e. one replica):
    vllm.LLM(model=<dir with the HF config.json>, load_format="dummy", tensor_parallel_size=<infer TP>,
             distributed_executor_backend="external_launcher", seed=<fixed per replica>,
             enable_sleep_mode=True, logprobs_mode="processed_logprobs", dtype, max_model_len,
             max_num_seqs, gpu_memory_utilization,
             enable_expert_parallel=<infer EP > 1>, data_parallel_size=<infer EP / TP when EP > TP>)
The weights never come from disk ("dummy"); the first push fills them.

Per step (driven by `mindrl.rollout.runner.RolloutRunner`):
    wake_up(tags=["weights"]) -> model.load_weights(bucket) ... -> wake_up(tags=["kv_cache"])
    -> generate -> reset_prefix_cache() -> sleep(level=1)
Level 1 only (level 2 drops the weights, and vllm-ascend supports level 1 only); the weights are
woken before any is written (writing into slept, offloaded memory is lost on wake-up).

Sampling: one request per prompt with `n` samples and its own seed
`splitmix64(request seed, prompt key)`, so a sample depends on (seed, prompt, sample) and not on
which replica or batch generated it. Log-probs: `processed_logprobs` are taken after temperature,
equal to ours (`log_softmax(logits / T)`, see base.py) while top-k / top-p / min-p are off.
"""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from typing import Any, Iterable, Sequence

import torch

from mindrl.rollout.base import RolloutOutput, SamplingParams
from mindrl.rollout.sampling import splitmix64_py

VLLM_VERSION = "0.11.0"
VLLM_ASCEND_VERSION = "0.11.0rc0"
DTYPES = {"auto": "auto", "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def _require_vllm() -> Any:
    if importlib.util.find_spec("vllm") is None:
        raise ImportError("generate_config.engine=vllm needs the 'vllm' package (on Ascend also 'vllm-ascend'), "
                          "which is not installed; see docs/hardware.md, or use engine=builtin")
    import vllm

    return vllm


def write_hf_config(hf_cfg: dict[str, Any], directory: str | None = None) -> str:
    """A directory holding config.json (all vLLM reads with load_format="dummy"); atomic write."""
    directory = directory or tempfile.mkdtemp(prefix="mindrl_vllm_")
    path = os.path.join(directory, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(hf_cfg, f)
    os.replace(tmp, path)
    return directory


class VllmRolloutEngine:
    """Wraps one colocated `vllm.LLM` (see the module docstring)."""

    def __init__(self, model: str, *, vllm_module: Any = None, **llm_kwargs: Any) -> None:
        vllm = vllm_module if vllm_module is not None else _require_vllm()
        llm_kwargs.setdefault("enable_sleep_mode", True)
        llm_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        self._vllm = vllm
        self.llm = vllm.LLM(model=model, **llm_kwargs)
        self.awake: set[str] = {"weights", "kv_cache"}  # vLLM starts awake

    @classmethod
    def from_generate_config(cls, gen_cfg: Any, *, hf_cfg: dict[str, Any], layout: Any, replica: int, seed: int,
                             tokenizer_path: str | None = None, vllm_module: Any = None) -> "VllmRolloutEngine":
        kwargs: dict[str, Any] = dict(
            load_format="dummy", tensor_parallel_size=layout.tp, distributed_executor_backend="external_launcher",
            seed=seed + replica, enable_sleep_mode=True, logprobs_mode="processed_logprobs",
            dtype=DTYPES.get(gen_cfg.dtype, gen_cfg.dtype), max_model_len=gen_cfg.max_model_len,
            max_num_seqs=gen_cfg.max_num_seqs, gpu_memory_utilization=gen_cfg.gpu_memory_utilization)
        if layout.ep > 1:
            # vLLM splits experts over TP x DP of one engine: EP/TP data-parallel ranks (each its own
            # replica for prompts) share one expert-parallel group, e.g. TP4 EP8 -> DP 2.
            kwargs["enable_expert_parallel"] = True
            if layout.ep > layout.tp:
                kwargs["data_parallel_size"] = layout.ep // layout.tp
        if tokenizer_path:
            kwargs["tokenizer"] = tokenizer_path
        else:
            kwargs["skip_tokenizer_init"] = True
        engine = cls(write_hf_config(hf_cfg), vllm_module=vllm_module, **kwargs)
        engine.sleep()  # hold no device memory until the first step
        return engine

    def _params(self, p: SamplingParams, seed: int | None) -> Any:
        return self._vllm.SamplingParams(
            n=p.n, temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, min_p=p.min_p, max_tokens=p.max_tokens,
            stop=list(p.stop) or None, stop_token_ids=list(p.stop_token_ids) or None, ignore_eos=p.ignore_eos,
            include_stop_str_in_output=p.include_stop_str_in_output, seed=seed,
            logprobs=0,  # 0: only the sampled token's log-prob (what the trainer needs)
            detokenize=p.detokenize or bool(p.stop))

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams,
                 prompt_keys: Sequence[int] | None = None) -> list[RolloutOutput]:
        if not prompt_token_ids:
            return []
        keys = list(range(len(prompt_token_ids))) if prompt_keys is None else list(prompt_keys)
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids]
        per_prompt = [self._params(params, None if params.seed is None else splitmix64_py(params.seed ^ (k << 20)))
                      for k in keys]
        results = self.llm.generate(prompts, sampling_params=per_prompt, use_tqdm=False)
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
        """HF-named full tensors into vLLM's model, which slices its own TP / EP shard."""
        if "weights" not in self.awake:
            raise RuntimeError("load_weights while vLLM's weights are asleep: call wake_up(['weights']) first")
        weights = list(named_tensors)
        self.llm.collective_rpc(lambda worker: worker.model_runner.model.load_weights(weights=weights))

    update_weights = load_weights

    def sleep(self) -> None:
        if "kv_cache" in self.awake:
            self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        self.llm.sleep(level=1)  # weights to host memory, KV cache dropped; NPU supports level 1 only
        self.awake.clear()

    def wake_up(self, tags: list[str] | None = None) -> None:
        tags = list(tags or ["weights", "kv_cache"])
        if "kv_cache" in tags and "weights" not in self.awake and "weights" not in tags:
            raise RuntimeError("wake the weights before the KV cache")
        todo = [t for t in tags if t not in self.awake]
        if todo:
            self.llm.wake_up(tags=todo)
            self.awake.update(todo)
