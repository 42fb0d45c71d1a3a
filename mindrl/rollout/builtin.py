"""The built-in rollout engine: batched sampling from a live megatron-core `GPTModel` with
megatron's `StaticInferenceContext` KV cache. Runs on every backend (CPU included), TP>1, EP>1
(MoE) and PP>1 (one model chunk per rank; no virtual pipeline stages).

Why not megatron's own legacy engine (`StaticInferenceEngine` + `TextGenerationController`): in
0.16.1 it takes one global top-k *or* top-p (asserts against both), no min-p, one RNG for the
whole batch (no per-request seeds), stops only at the tokenizer's EOD in static batching (stop
words are dynamic-engine only), reports un-tempered log-probs, needs its tokenizer abstraction,
and raises NotImplementedError for sequence-parallel models unless both TP>1 and EP>1 — which
excludes MoE/MLA at TP>1, EP=1. The dynamic engine needs flash-attn and CUDA graphs. We keep
megatron's model-side inference path (KV cache in `StaticInferenceContext`, rotary slicing by
`sequence_len_offset`, last-token logits, TP-gathered output) and write the loop and sampler.

How a batch runs (megatron's legacy scheme, chosen for exactness):
- Rows are aligned at position 0, prompts right-padded. Megatron's static path applies rotary
  embeddings by *cache position* (`rotary_pos_emb[sequence_len_offset:...]`) and ignores
  `position_ids` for rope, so left padding would shift every rope position of a short prompt;
  aligned rows keep each token at its true position, the same as the trainer's forward.
- Prefill runs the common prefix (the shortest prompt) once per prompt, then the KV cache is
  repeated `n` times (the group shares the prompt's prefill). Each later step feeds one token per
  row: the row's next prompt token while it is still inside its prompt, else its sampled token.
  No padding ever enters attention, so no mask is needed: causal prefill, and decode attends the
  whole cache (our core attentions align a query-shorter-than-key causal mask bottom-right).
- Finished rows are dropped from the KV cache and from compute at once.
- Logits are gathered over TP by megatron (`runtime_gather_output=True`, required in inference
  mode), padded vocab set to -inf, and sampled identically on every TP rank (counter-based noise,
  see sampling.py) — no broadcast needed.
- EP>1: MoE all-to-alls need every EP rank in every forward; a rank that has run out of work runs
  a one-token dummy forward until all ranks in its expert group are done.
- Sequence parallelism (on for MoE/MLA at TP>1) cannot split a one-token decode step: it is
  switched off for the call and restored after (MoE layers then see the full sequence on every TP
  rank; their all-gather / reduce-scatter still return each rank its own, complete result).
- PP>1: every forward (prefill and each decode step) goes through the pipeline. The first stage
  embeds and runs its layers and sends the hidden states [s, b, h] to the next stage
  (`torch.distributed.send/recv` in the pipeline group); a later stage receives them,
  `set_input_tensor`s them and runs its layers; the last stage computes the logits and samples.
  The last stage then broadcasts the chosen tokens and their log-probs to the whole pipeline group,
  and every stage applies the same stop rules to the same tokens, so all stages keep the same rows
  and drop finished ones from their own KV caches (each stage's `StaticInferenceContext` holds only
  its own layers) at the same step. Every rank of a model-parallel group (TP x PP) must call
  `generate` with the same prompts and parameters, as the trainer's SPMD loop does.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.inference.contexts import StaticInferenceContext
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
    _yarn_get_concentration_factor_from_config)
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import Attention

from mindrl.rollout.base import RolloutOutput, SamplingParams
from mindrl.rollout.fused_head import FusedHead
from mindrl.rollout.sampling import row_keys, sample, splitmix64_py
from mindrl.rollout.stops import StopChecker

_SP_ATTRS = ("sequence_parallel", "scatter_to_sequence_parallel", "reduce_scatter_embeddings")


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    while hasattr(module, "module"):  # DDP, Float16Module
        module = module.module
    return module


def _rope_before_cache(module: Attention) -> Callable[..., Any]:
    """`module._adjust_key_value_for_inference` with the new keys rotated *before* they enter the KV cache.

    megatron 0.16's static-batching path caches un-rotated keys and applies the rotary embedding to the
    whole cache (`k_pos_emb[:sequence_end]`) in every layer at every decode step: several full passes
    over the cache (cos, sin, mul, neg, cat) per token, quadratic in the length. Here each key is rotated
    once, at its own position, with the same elementwise formula, so the cache holds bit-identical
    rotated keys; the query is rotated as before and megatron skips the key (k_pos_emb None, the path
    its flash-decode mode takes). Attention without rotary embeddings (MLA rotates its own) is untouched."""
    original = module._adjust_key_value_for_inference

    def adjust(inference_context: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               rotary_pos_emb: Any, *args: Any, **kwargs: Any) -> Any:
        if (rotary_pos_emb is None or inference_context is None or not inference_context.is_static_batching()
                or module.config.flash_decode):
            return original(inference_context, query, key, value, rotary_pos_emb, *args, **kwargs)
        q_emb, k_emb = rotary_pos_emb if isinstance(rotary_pos_emb, tuple) else (rotary_pos_emb,) * 2
        start = inference_context.sequence_len_offset
        end = start + key.shape[0]
        if k_emb is not None:
            key = apply_rotary_pos_emb(key, k_emb[start:end], config=module.config,
                                       mscale=_yarn_get_concentration_factor_from_config(module.config),
                                       cp_group=module.pg_collection.cp)
        query, key, value, _, mask_type, block_table = original(inference_context, query, key, value, None,
                                                                *args, **kwargs)
        return query, key, value, (None if q_emb is None else q_emb[start:end], None), mask_type, block_table
    return adjust


@contextmanager
def _inference_mode(model: torch.nn.Module) -> Iterator[None]:
    """eval(), no grad, sequence parallelism off, keys rotated once before the KV cache
    (`_rope_before_cache`); everything restored afterwards."""
    inner = _unwrap(model)
    saved = [(m, a, getattr(m, a)) for m in inner.modules() for a in _SP_ATTRS if getattr(m, a, None) is True]
    config_sp = inner.config.sequence_parallel
    was_training = [(m, m.training) for m in model.modules()]
    attentions = [m for m in inner.modules() if isinstance(m, Attention)]
    try:
        for m, a, _ in saved:
            setattr(m, a, False)
        inner.config.sequence_parallel = False
        for m in attentions:
            m._adjust_key_value_for_inference = _rope_before_cache(m)  # this instance only, for this call
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for m in attentions:
            m.__dict__.pop("_adjust_key_value_for_inference", None)
        for m, a, v in saved:
            setattr(m, a, v)
        inner.config.sequence_parallel = config_sp
        for m, t in was_training:
            m.training = t


@contextmanager
def _packed_linears(model: torch.nn.Module, packer: Any, rows: int, clock: list[float]) -> Iterator[None]:
    """Every megatron linear of `model` (the layers' and the LM head's, tied or not) computed on its weight
    packed by `packer` (a `mindrl.backends.packed_linear.LinearPacker`), packed at its first use in this
    call and dropped at the end: the weights change between calls (every optimizer step, every push), so
    no packed copy outlives the call that made it. `rows`: the rows most calls will have (the decode
    batch). `clock[0]` accumulates the seconds spent packing. Anything the packed path does not cover
    (another dtype than the weight's, sequence parallelism) goes through megatron's own `_forward_impl`."""
    import time

    inner = _unwrap(model)
    linears = [m for m in inner.modules() if isinstance(m, (ColumnParallelLinear, RowParallelLinear))]
    head = getattr(inner, "output_layer", None) if getattr(inner, "post_process", False) else None
    packs: dict[torch.Tensor, Any] = {}  # keyed by the weight object (hash = identity)
    buffers: dict[torch.Tensor, torch.Tensor] = {}  # the LM head's logits, reused every step

    def wrap(original: Callable[..., Any], is_head: bool) -> Callable[..., Any]:
        def forward_impl(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         *args: Any, **kwargs: Any) -> torch.Tensor:
            if args or kwargs.get("sequence_parallel") or input.dtype != weight.dtype:
                return original(input, weight, bias, *args, **kwargs)
            fn = packs.get(weight)
            if fn is None:
                t0 = time.perf_counter()
                fn = packs[weight] = packer(weight, rows, with_out=is_head)
                clock[0] += time.perf_counter() - t0
            if not is_head:
                return fn(input, bias)
            # The LM head's output is read by the sampler before the next forward writes the buffer again
            # (prefill's logits are indexed into a copy, TP>1 gathers into a new tensor): one buffer serves
            # every step instead of a fresh vocab-wide tensor per step.
            n = input.numel() // input.shape[-1]
            buf = buffers.get(weight)
            if buf is None or buf.shape[0] < n:
                buf = buffers[weight] = torch.empty(n, weight.shape[0], dtype=input.dtype, device=input.device)
            return fn(input, bias, buf[:n].view(*input.shape[:-1], weight.shape[0]))
        return forward_impl
    try:
        for m in linears:
            m._forward_impl = wrap(m._forward_impl, m is head)  # this instance only, for this call
        yield
    finally:
        for m in linears:
            m.__dict__.pop("_forward_impl", None)
        packs.clear()
        buffers.clear()


class _HeadInput:
    """`fused_sampler`: the output layer's input and weight, recorded by `_fused_head` instead of its logits."""

    def __init__(self, engine: "BuiltinRolloutEngine", packer: Any, rows: int, clock: list[float]) -> None:
        self.engine, self.packer, self.rows, self.clock = engine, packer, rows, clock
        self.head: FusedHead | None = None
        self.weight: torch.Tensor | None = None

    def sampler(self, weight: torch.Tensor, bias: torch.Tensor | None) -> FusedHead:
        """The fused head on this call's LM-head weight (built, and packed, at its first use in the call)."""
        if self.head is None or weight is not self.weight:
            import time

            t0 = time.perf_counter()
            self.head = FusedHead(weight, bias, self.engine.vocab_size, packer=self.packer, rows=self.rows)
            self.weight = weight
            if self.packer is not None:
                self.clock[0] += time.perf_counter() - t0
        return self.head


@contextmanager
def _fused_head(model: torch.nn.Module, state: _HeadInput) -> Iterator[None]:
    """The output layer returns its input (the final hidden states) for this call, and records its weight (the
    embedding's when tied) in `state`: the engine then computes the LM head fused with the sampler
    (mindrl/rollout/fused_head.py), and only for the rows that sample. TP=1 only (the caller checks)."""
    inner = _unwrap(model)
    layer = getattr(inner, "output_layer", None) if getattr(inner, "post_process", False) else None
    if layer is None:
        yield
        return

    def forward(input_: torch.Tensor, weight: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> Any:
        w = layer.weight if weight is None else weight
        bias = None if layer.skip_bias_add else layer.bias
        state.sampler(w, bias)
        return input_, None
    layer.forward = forward  # this instance only, for this call
    try:
        yield
    finally:
        layer.__dict__.pop("forward", None)


class _Batch:
    """One static batch: prompts (each sampled `n` times) from prefill to the last finished row."""

    def __init__(self, engine: "BuiltinRolloutEngine", prompts: list[tuple[int, list[int]]], params: SamplingParams,
                 seed: int, head: _HeadInput | None = None) -> None:
        self.engine, self.params, self.n = engine, params, params.n
        self.head = head  # fused_sampler: `self.logits` holds the final hidden states, the head runs in `_choose`
        device = engine.device
        self.prompts = prompts
        lens = [len(p) for _, p in prompts]
        self.min_len, max_len = min(lens), max(lens)
        self.max_seq = max_len + params.max_tokens
        rows = len(prompts) * self.n
        self.buf = torch.zeros(rows, self.max_seq, dtype=torch.long, device=device)
        for i, (_, ids) in enumerate(prompts):
            self.buf[i * self.n:(i + 1) * self.n, :len(ids)] = torch.tensor(ids, dtype=torch.long, device=device)
        self.prompt_len = torch.tensor(lens, device=device).repeat_interleave(self.n)
        pidx = torch.tensor([i for i, _ in prompts], device=device).repeat_interleave(self.n)
        sidx = torch.arange(self.n, device=device).repeat(len(prompts))
        self.keys = row_keys(seed, pidx, sidx)
        self.active = torch.arange(rows, device=device)  # batch rows still generating, in cache order
        self.generated: list[list[int]] = [[] for _ in range(rows)]
        self.logprobs: list[list[float]] = [[] for _ in range(rows)]
        self.finish: list[tuple[str, Any] | None] = [None] * rows
        self.stops = StopChecker(params, engine.eos_token_ids, engine.decode)
        self.ctx = StaticInferenceContext(max_batch_size=len(prompts), max_sequence_length=self.max_seq)
        self.pos = 0  # next position whose token is chosen
        self.prefilled = False
        self.logits: torch.Tensor | None = None  # last pipeline stage only
        self.probs: torch.Tensor | None = None  # the sampler's softmax buffer, reused every step

    def step(self) -> bool:
        """One forward (prefill or one decode step) and the token choice it allows; True when done."""
        if not self.prefilled:  # prefill the common prefix, once per prompt
            first = torch.arange(0, len(self.buf), self.n, device=self.buf.device)
            logits = self.engine.forward(self.buf[first, :self.min_len], self.ctx, head_input=self.head is not None)
            expand = torch.arange(len(self.prompts), device=self.buf.device).repeat_interleave(self.n)
            self._reindex(expand)
            self.ctx.max_batch_size = len(self.buf)
            self.logits = None if logits is None else logits[expand]
            self.pos, self.prefilled = self.min_len, True
        else:
            self.logits = self.engine.forward(self.buf[self.active, self.pos - 1:self.pos], self.ctx,
                                              head_input=self.head is not None)
        self._choose()
        return len(self.active) == 0

    def _choose(self) -> None:
        """Tokens for position `self.pos` of the active rows; finish and drop rows that are done."""
        p = self.params
        started = self.prompt_len[self.active] <= self.pos  # rows past their prompt sample; the others are forced
        if bool(started.any()):
            rows = self.active[started]
            tokens = logps = None
            if self.logits is not None:  # the last pipeline stage (every rank when PP=1)
                # Every row sampling (the usual case past the longest prompt): no copy of the logits.
                # fused_sampler: these are hidden states, so rows still inside their prompt skip the LM head.
                logits = self.logits if len(rows) == len(started) else self.logits[started]
                if self.head is not None:
                    assert self.head.head is not None, "the output layer did not run"
                    tokens, logps = self.head.head.sample(logits, temperature=p.temperature, keys=self.keys[rows],
                                                          steps=self.pos - self.prompt_len[rows])
                else:
                    if self.probs is None or self.probs.shape[1] != logits.shape[1]:
                        self.probs = torch.empty(len(self.buf), logits.shape[1], dtype=torch.float32,
                                                 device=logits.device)
                    tokens, logps = sample(logits, temperature=p.temperature, top_k=p.top_k,
                                           top_p=p.top_p, min_p=p.min_p, keys=self.keys[rows],
                                           steps=self.pos - self.prompt_len[rows], probs_out=self.probs[:len(rows)])
            tokens, logps = self.engine.share_choice(tokens, logps, len(rows))
            self.buf[rows, self.pos] = tokens
            for r, t, lp in zip(rows.tolist(), tokens.tolist(), logps.tolist()):
                self.generated[r].append(t)
                self.logprobs[r].append(lp)
                self.finish[r] = self.stops.check(self.generated[r])
        keep = [i for i, r in enumerate(self.active.tolist()) if self.finish[r] is None]
        self.pos += 1
        if len(keep) < len(self.active):
            self._reindex(torch.tensor(keep, dtype=torch.long, device=self.active.device))
            self.active = self.active[keep]

    def _reindex(self, index: torch.Tensor) -> None:
        """Select / repeat KV-cache rows (batch is dim 1 of megatron's [seq, batch, heads, dim])."""
        for layer, (k, v) in self.ctx.key_value_memory_dict.items():
            self.ctx.key_value_memory_dict[layer] = (k.index_select(1, index), v.index_select(1, index))

    def outputs(self) -> list[RolloutOutput]:
        out = []
        for row, (reason, stop_reason) in enumerate(self.finish):  # type: ignore[misc]
            pidx, ids = self.prompts[row // self.n]
            tokens = self.generated[row]
            text = self.stops.text(tokens, stop_reason) if self.params.detokenize or isinstance(stop_reason, str) else None
            out.append(RolloutOutput(prompt_index=pidx, sample_index=row % self.n, prompt_token_ids=list(ids),
                                     token_ids=tokens, logprobs=self.logprobs[row], finish_reason=reason,
                                     stop_reason=stop_reason, text=text))
        return out


class BuiltinRolloutEngine:
    """`RolloutEngine` over this rank's megatron `GPTModel` chunk (shared with the actor: no copies).

    model: the chunk (DDP / Float16Module wrappers are fine). vocab_size: the real (unpadded) vocab.
    eos_token_id: one id or several. tokenizer: anything with `decode(ids) -> str`, or a callable;
    needed for stop strings and `detokenize`. max_batch_size: rows (prompts x n) per static batch.
    seed: mixed with the data-parallel rank and a call counter when `SamplingParams.seed` is None.
    linear_packer: the backend's `linear_packer(dtype)` (generate_config.packed_linear): every linear runs on
    weights packed once per `generate` call (`_packed_linears`); None: megatron's own matmuls.
    fused_sampler: (generate_config.fused_sampler) at TP=1, for temperature sampling without top-k / top-p / min-p,
    the LM head runs fused with the sampler (mindrl/rollout/fused_head.py; on its own packed chunks with
    `linear_packer`), only for the rows that sample; otherwise the unfused path.
    """

    def __init__(self, model: torch.nn.Module | Sequence[torch.nn.Module], *, vocab_size: int,
                 eos_token_id: int | Sequence[int] | None = None, tokenizer: Any = None,
                 max_batch_size: int = 256, seed: int = 0, weight_loader: Any = None,
                 linear_packer: Any = None, fused_sampler: bool = False) -> None:
        if isinstance(model, Sequence):
            if len(model) != 1:
                raise ValueError(f"the built-in rollout engine needs one model chunk, got {len(model)} "
                                 "(virtual pipeline stages are not supported): "
                                 "use num_layers_per_virtual_pipeline_stage=None")
            model = model[0]
        self.model = model
        inner = _unwrap(model)
        self.pp = ps.get_pipeline_model_parallel_world_size() if ps.model_parallel_is_initialized() else 1
        self.first_stage = self.pp == 1 or ps.is_pipeline_first_stage()
        self.last_stage = self.pp == 1 or ps.is_pipeline_last_stage()
        if self.pp > 1:
            self.pp_group = ps.get_pipeline_model_parallel_group()
            self.prev_rank = ps.get_pipeline_model_parallel_prev_rank()
            self.next_rank = ps.get_pipeline_model_parallel_next_rank()
            self.last_rank = ps.get_pipeline_model_parallel_last_rank()
            self.hidden_size = inner.config.hidden_size
            self.pipeline_dtype = inner.config.pipeline_dtype or inner.config.params_dtype
        self.vocab_size = vocab_size
        if eos_token_id is None:
            eos_token_id = getattr(tokenizer, "eos_token_id", None)
        self.eos_token_ids = [] if eos_token_id is None else (
            [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(t) for t in eos_token_id])
        self.decode: Callable[[list[int]], str] | None = (
            None if tokenizer is None else (tokenizer.decode if hasattr(tokenizer, "decode") else tokenizer))
        self.max_batch_size = max_batch_size
        self.seed = seed
        self.weight_loader = weight_loader
        self.linear_packer = linear_packer
        self.fused_sampler = fused_sampler
        self.last_pack_seconds = 0.0  # time the last `generate` spent packing weights (linear_packer only)
        self._calls = 0
        self.device = next(_unwrap(model).parameters()).device

    @classmethod
    def from_plan(cls, plan: Any, chunks: Sequence[torch.nn.Module], **kwargs: Any) -> "BuiltinRolloutEngine":
        """From a `mindrl.models.ModelPlan` and this rank's chunks."""
        hf_eos = plan.hf.get("eos_token_id")
        kwargs.setdefault("eos_token_id", hf_eos)
        return cls(list(chunks), vocab_size=plan.vocab_size, **kwargs)

    # -- RolloutEngine --------------------------------------------------------------------------
    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams,
                 prompt_keys: Sequence[int] | None = None) -> list[RolloutOutput]:
        """`prompt_keys`: the prompt index each prompt's samples are keyed by (default its position),
        so a caller that splits one request over replicas draws the same samples as one call would.
        `RolloutOutput.prompt_index` is always the position in `prompt_token_ids`."""
        errors = params.check()
        if errors:
            raise ValueError("invalid sampling params: " + "; ".join(errors))
        if params.stop and self.decode is None:
            raise ValueError("stop strings need a tokenizer: BuiltinRolloutEngine(..., tokenizer=...)")
        if any(len(p) == 0 for p in prompt_token_ids):
            raise ValueError("every prompt needs at least one token (e.g. BOS)")
        self._calls += 1
        seed = params.seed if params.seed is not None else splitmix64_py(
            (self.seed << 32) ^ (self._dp_rank() << 16) ^ self._calls)
        per_batch = max(1, self.max_batch_size // params.n)
        keys = list(range(len(prompt_token_ids))) if prompt_keys is None else [int(k) for k in prompt_keys]
        if len(keys) != len(prompt_token_ids):
            raise ValueError(f"{len(keys)} prompt_keys for {len(prompt_token_ids)} prompts")
        position = {k: i for i, k in enumerate(keys)}
        if len(position) != len(keys):
            raise ValueError("prompt_keys must be distinct")
        indexed = list(zip(keys, [list(p) for p in prompt_token_ids]))
        batches = [indexed[i:i + per_batch] for i in range(0, len(indexed), per_batch)]
        results: list[RolloutOutput] = []
        clock = [0.0]
        packed = (nullcontext() if self.linear_packer is None else
                  _packed_linears(self.model, self.linear_packer, min(len(indexed), per_batch) * params.n, clock))
        head = (_HeadInput(self, self.linear_packer, min(len(indexed), per_batch) * params.n, clock)
                if self._fuses(params) else None)
        fused = nullcontext() if head is None else _fused_head(self.model, head)
        with _inference_mode(self.model), self._pipeline_input_reset(), packed, fused:
            current: _Batch | None = None
            while True:
                if current is None and batches:
                    current = _Batch(self, batches.pop(0), params, seed, head)
                if not self._anyone_busy(current is not None):
                    break
                if current is None:
                    self._dummy_forward()
                elif current.step():
                    results.extend(current.outputs())
                    current = None
        self.last_pack_seconds = clock[0]
        for o in results:
            o.prompt_index = position[o.prompt_index]
        return results

    def _fuses(self, params: SamplingParams) -> bool:
        """fused_sampler applies: temperature sampling with no filter (they need the whole distribution), TP=1
        (a vocab-parallel head would need the per-row max and block sums all-reduced and the chosen block's
        logits sent from the rank that owns them every step; TP>1 keeps megatron's gathered logits)."""
        tp = ps.get_tensor_model_parallel_world_size() if ps.model_parallel_is_initialized() else 1
        filtered = (params.top_k is not None and 0 < params.top_k < self.vocab_size) or params.top_p < 1.0 \
            or params.min_p > 0.0
        return self.fused_sampler and params.temperature > 0 and not filtered and tp == 1

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """HF-named full tensors into this engine's own shard (`weight_loader`, a
        `mindrl.checkpoint.live.HFShardLoader`; call inside the model's parallel state). Without
        one the engine generates from the actor's live parameters and this is a no-op."""
        if self.weight_loader is not None:
            self.weight_loader.load(named_tensors)

    update_weights = load_weights

    def sleep(self) -> None:
        """No-op: the KV cache lives only inside `generate`."""

    def wake_up(self, tags: list[str] | None = None) -> None:
        """No-op."""

    # -- model calls ----------------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, ctx: StaticInferenceContext,
                head_input: bool = False) -> torch.Tensor | None:
        """Last-position logits [rows, vocab] (fp32, full vocab, padding at -inf) for `tokens` [rows, s];
        None on a pipeline stage before the last (which sends its hidden states on instead). `head_input`
        (fused_sampler, under `_fused_head`): the last position's final hidden states [rows, hidden] instead."""
        start = ctx.sequence_len_offset
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device).expand_as(tokens)
        if not self.first_stage:
            hidden = torch.empty(tokens.shape[1], tokens.shape[0], self.hidden_size, dtype=self.pipeline_dtype,
                                 device=self.device)
            dist.recv(hidden, src=self.prev_rank, group=self.pp_group)
            _unwrap(self.model).set_input_tensor(hidden)
        out = self.model(tokens, positions, None, inference_context=ctx, runtime_gather_output=True)
        ctx.sequence_len_offset += tokens.shape[1]
        if not self.last_stage:
            dist.send(out.to(self.pipeline_dtype).contiguous(), dst=self.next_rank, group=self.pp_group)
            return None
        if head_input:
            return out[:, -1, :]  # the output layer returned its input
        logits = out[:, -1, :].float()
        if logits.shape[-1] > self.vocab_size:
            logits[:, self.vocab_size:] = float("-inf")  # TP vocab padding: never a token
        return logits

    def share_choice(self, tokens: torch.Tensor | None, logps: torch.Tensor | None,
                     rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """PP>1: the last stage's sampled tokens and log-probs, on every stage of the pipeline.

        One float64 broadcast carries both (token ids < 2**53 and fp32 log-probs are exact in it)."""
        if self.pp == 1:
            assert tokens is not None and logps is not None
            return tokens, logps
        if self.last_stage:
            assert tokens is not None and logps is not None
            buf = torch.stack([tokens.double(), logps.double()])
        else:
            buf = torch.empty(2, rows, dtype=torch.float64, device=self.device)
        dist.broadcast(buf, src=self.last_rank, group=self.pp_group)
        if self.last_stage:
            return tokens, logps
        return buf[0].long(), buf[1].float()

    @contextmanager
    def _pipeline_input_reset(self) -> Iterator[None]:
        """Clear the received hidden states from a later stage's model when generation ends."""
        try:
            yield
        finally:
            if not self.first_stage:
                _unwrap(self.model).set_input_tensor(None)

    def _dummy_forward(self) -> None:
        """Keep MoE all-to-alls matched while other EP ranks still generate. With PP every stage of
        an idle pipeline runs one locally (zeros in place of the previous stage's hidden states): the
        stages of one pipeline always share their work, so they are idle together."""
        zeros = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        if not self.first_stage:
            _unwrap(self.model).set_input_tensor(
                torch.zeros(1, 1, self.hidden_size, dtype=self.pipeline_dtype, device=self.device))
        self.model(zeros, zeros, None)

    def _anyone_busy(self, busy: bool) -> bool:
        """True while this rank or (EP>1) any rank of its expert group still has work."""
        if not ps.model_parallel_is_initialized() or ps.get_expert_model_parallel_world_size() == 1:
            return busy
        flag = torch.tensor([int(busy)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=ps.get_expert_tensor_and_model_parallel_group())
        return bool(flag.item())

    @staticmethod
    def _dp_rank() -> int:
        return ps.get_data_parallel_rank() if ps.model_parallel_is_initialized() else 0
