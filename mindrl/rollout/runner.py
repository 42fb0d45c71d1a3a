"""`RolloutRunner`: the rollout the trainer holds. It owns the weight flow and the replica split
around one `RolloutEngine`, so the trainer's step only calls `generate` and, after an update,
`weights_updated()`.

Two modes (chosen by `mindrl.rollout.factory.build_rollout`):

- shared: the built-in engine generates from the actor's live parameters in the training layout
  (zero copy). `generate` is the engine's; every data-parallel rank generates its own prompts.
- resharded: the engine keeps its own weights in the rollout layout (rollout TP x EP, PP = 1; the
  remaining ranks are replicas). Before the first `generate` after `weights_updated()` the
  weights are pushed: `mindrl.checkpoint.live.iter_hf_buckets` gathers them from the training
  layout into HF-named buckets (the one mapping that also serves checkpoint conversion) and the
  engine's `load_weights` keeps its shard. Then every rank's prompts (one request per training
  data-parallel rank) are split over the rollout replicas and the results gathered back, so each
  rank gets exactly the samples one replica would have made for it: samples are keyed by
  (request seed, prompt index within the request, sample index), never by replica.

Per step the engine sees: wake_up(["weights"]) -> load_weights (when stale; between the engine's
start_weight_update / finish_weight_update where it has them) -> wake_up(["kv_cache"]) -> generate
-> sleep() (the vLLM adapter resets its prefix cache and sleeps at level 1 there where the platform can).
With `train_state` (generate_config.offload_train_state) the training state goes to host memory
before the first wake-up and comes back after the sleep.

LoRA: pushes send merged weights (W + s·B@A; any engine), or, to an engine built for adapter pushes
(vLLM with actor_config.lora.merge=false), the frozen base once and the adapters every push.

May import: torch, megatron-core, mindrl.models, mindrl.checkpoint, mindrl.rollout.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict
from typing import Any, ContextManager, Iterable

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from mindrl.checkpoint.live import PushArena, iter_hf_buckets
from mindrl.models.lora import gather_canonical_adapters
from mindrl.rollout.base import RolloutEngine, RolloutOutput, SamplingParams
from mindrl.rollout.parallel import RolloutParallelState
from mindrl.rollout.sampling import splitmix64_py


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of each of `parts` contiguous, near-equal pieces of range(n) (earlier ones larger)."""
    q, r = divmod(n, parts)
    bounds, start = [], 0
    for p in range(parts):
        end = start + q + (1 if p < r else 0)
        bounds.append((start, end))
        start = end
    return bounds


class RolloutRunner:
    """See the module docstring. `engine` must accept `generate(..., prompt_keys=...)` when resharded."""

    def __init__(self, engine: RolloutEngine, *, shared: bool, source_chunks: list[torch.nn.Module] | None = None,
                 hf_cfg: dict[str, Any] | None = None, state: RolloutParallelState | None = None,
                 replica: tuple[int, int] = (0, 1), replica_leader: bool = True, bucket_bytes: int = 512 * 1024**2,
                 seed: int = 0, train_state: Any = None) -> None:
        self.engine, self.shared = engine, shared
        self.source_chunks, self.hf_cfg, self.state = source_chunks, hf_cfg, state
        self.replica, self.num_replicas = replica
        self.replica_leader = replica_leader  # first rank of its replica: contributes the replica's results
        self.bucket_bytes, self.seed = bucket_bytes, seed
        # generate_config.offload_train_state: `offload()` / `reload()` around the engine's awake phase
        # (mindrl.backends.offload.TrainStateOffload); None: the training state stays where it is.
        self.train_state = train_state
        self.stale = not shared  # a copy holds nothing useful until the first push
        self.pushes = 0
        self.base_pushed = False  # LoRA adapter pushes: the frozen base went into the engine once
        self.last_push: dict[str, float] = {}
        self.arena = PushArena()  # the push's send/receive buffer, one bucket at most, reused every push
        self._calls = 0

    # -- the trainer's interface ------------------------------------------------------------------
    def weights_updated(self) -> None:
        """The actor's weights changed: push them before the next `generate` (no-op when shared)."""
        if not self.shared:
            self.stale = True

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams,
                 prompt_keys: list[int] | None = None) -> list[RolloutOutput]:
        """Collective over the world when resharded (every rank calls with its own prompts).
        `prompt_keys`: what each prompt's samples are keyed by (default: its position); the trainer
        passes the prompt's index in the step's global batch, so with one seed for every rank the
        samples do not depend on how prompts are spread over data-parallel ranks or replicas."""
        if self.shared:
            if prompt_keys is None:
                return self.engine.generate(prompt_token_ids, params)
            return self.engine.generate(prompt_token_ids, params, prompt_keys=prompt_keys)
        self._calls += 1
        if self.train_state is not None:
            self.train_state.offload()  # before the engine takes device memory
        try:
            self.engine.wake_up(["weights"])
            if self.stale:
                self.push_weights()
            self.engine.wake_up(["kv_cache"])
            try:
                return self._generate_split(prompt_token_ids, params, prompt_keys)
            finally:
                self.engine.sleep()
        finally:
            if self.train_state is not None:
                self.train_state.reload()  # after the engine gave its memory back

    def push_weights(self) -> None:
        """Training layout -> rollout layout, bucket by bucket (collective over the world). An engine built
        for LoRA adapter pushes (`engine.lora_spec`, vLLM with actor_config.lora.merge=false) gets the base
        tensors unmerged on the first push only (the base is frozen), then the adapters on every push."""
        assert self.source_chunks is not None and self.hf_cfg is not None
        t0, nbytes = time.perf_counter(), 0
        self.last_push = {"received_bytes": 0.0}
        adapter_push = getattr(self.engine, "lora_spec", None) is not None
        if not (adapter_push and self.base_pushed):
            nbytes += self._push_tensors(merge_lora=not adapter_push)
            self.base_pushed = True
        if adapter_push:
            adapters, _ = gather_canonical_adapters(self.source_chunks)  # collective; every rank gets them all
            adapter_bytes = sum(t.numel() * t.element_size() for t in adapters.values())
            self.last_push["adapter_bytes"] = float(adapter_bytes)
            nbytes += adapter_bytes
            with self._rollout_state():
                self.engine.load_adapter(adapters)
        self.stale = False
        self.pushes += 1
        self.last_push.update(seconds=time.perf_counter() - t0, bytes=float(nbytes))

    def _push_tensors(self, merge_lora: bool) -> int:
        """Every weight (a LoRA actor's merged, unless `merge_lora=False`) into the engine; the bytes sent."""
        nbytes = 0
        loader = getattr(self.engine, "weight_loader", None)
        if loader is not None:
            loader.counts.clear()
        hf_names = not getattr(self.engine, "loads_canonical", False)  # megatron copies take canonical tensors
        def receive_into(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Any:
            with self._rollout_state():
                return loader.target(name, shape, dtype)

        target = receive_into if loader is not None and not hf_names else None
        # The routed experts this rank's rollout shard holds (None: all): only those are sent to it.
        owned = loader.expert_ids if loader is not None else getattr(self.engine, "expert_ids", None)
        stats: dict[str, int] = {}
        # An engine with an update session (vLLM's weight-update API) gets the whole push inside one:
        # its post-load processing runs once every tensor of a layer has arrived.
        start, finish = getattr(self.engine, "start_weight_update", None), getattr(self.engine, "finish_weight_update",
                                                                                  None)
        if start is not None:
            start()
        for bucket in iter_hf_buckets(self.source_chunks, self.hf_cfg, self.bucket_bytes, hf_names=hf_names,
                                      target=target, arena=self.arena, experts=None if owned is None else owned(),
                                      stats=stats, merge_lora=merge_lora):
            nbytes += sum(t.numel() * t.element_size() for _, t in bucket)
            with self._rollout_state():
                self.engine.load_weights(bucket)
        if finish is not None:
            finish()
        if loader is not None:  # every local tensor written exactly once, or the copy is wrong
            bad = loader.missing() + sorted(k for k, c in loader.counts.items() if c != len(loader.targets[k]))
            if bad:
                raise RuntimeError(f"weight push left rollout tensors unwritten or written twice: {bad[:4]}")
        self.last_push["received_bytes"] = float(stats.get("recv_bytes", 0))
        return nbytes

    def sleep(self) -> None:
        self.engine.sleep()

    def close(self) -> None:
        """Release the engine (vLLM: shut down before the process groups are destroyed)."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.engine.wake_up(tags)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        with self._rollout_state():
            self.engine.load_weights(named_tensors)

    # -- replica split ----------------------------------------------------------------------------
    def _rollout_state(self) -> ContextManager[None]:
        return self.state.active() if self.state is not None else nullcontext()

    def _request_seed(self, params: SamplingParams, dp_rank: int) -> int:
        if params.seed is not None:
            return params.seed
        # The built-in engine's own rule for a seedless call, so both modes draw the same samples.
        return splitmix64_py((self.seed << 32) ^ (dp_rank << 16) ^ self._calls)

    def _generate_split(self, prompts: list[list[int]], params: SamplingParams,
                        prompt_keys: list[int] | None = None) -> list[RolloutOutput]:
        dp_rank = ps.get_data_parallel_rank() if ps.model_parallel_is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        keys = list(range(len(prompts))) if prompt_keys is None else [int(k) for k in prompt_keys]
        if len(keys) != len(prompts):
            raise ValueError(f"{len(keys)} prompt_keys for {len(prompts)} prompts")
        mine = (dp_rank, [list(map(int, p)) for p in prompts], asdict(params), self._request_seed(params, dp_rank),
                keys)
        everyone: list[Any] = [mine]
        if world > 1:
            everyone = [None] * world
            dist.all_gather_object(everyone, mine)
        requests: dict[int, tuple[list[list[int]], dict[str, Any], int, list[int]]] = {}
        for d, ps_, p, seed, k in everyone:
            requests.setdefault(d, (ps_, p, seed, k))  # model-parallel peers send the same request
        items = [(d, i) for d in sorted(requests) for i in range(len(requests[d][0]))]
        start, end = split_evenly(len(items), self.num_replicas)[self.replica]
        share = items[start:end]
        results: list[tuple[int, int, RolloutOutput]] = []
        with self._rollout_state():
            for d in sorted(requests):  # every replica calls for every request: EP ranks stay in step
                req_prompts, p, seed, req_keys = requests[d]
                positions = [i for dd, i in share if dd == d]
                outs = self.engine.generate([req_prompts[i] for i in positions], SamplingParams(**{**p, "seed": seed}),
                                            prompt_keys=[req_keys[i] for i in positions])
                results += [(d, positions[o.prompt_index], o) for o in outs]
        sent = [(d, i, o) for d, i, o in results] if self.replica_leader else []
        gathered: list[Any] = [sent]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, sent)
        out = sorted(((i, o.sample_index, o) for g in gathered for d, i, o in g if d == dp_rank),
                     key=lambda x: (x[0], x[1]))
        for i, _, o in out:
            o.prompt_index = i
        if len(out) != len(prompts) * params.n:
            raise RuntimeError(f"rollout returned {len(out)} samples for {len(prompts)} prompts x n={params.n}")
        return [o for _, _, o in out]

