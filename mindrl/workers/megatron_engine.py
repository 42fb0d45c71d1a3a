"""The megatron-core training plumbing every worker shares: model + DDP + optimizer, and one
forward/backward over micro-batches with megatron's pipeline schedules.

Deliberately thin: megatron does the work (DDP grad buffers, finalize_model_grads, distributed
optimizer, 1F1B / interleaved schedules); this module only wires it for our models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from mindrl.models.builder import ModelPlan, build_model
from mindrl.models.lora import LoRASpec, apply_lora
from mindrl.models.fused_loss import output_loss as fused_output_loss
from mindrl.models.logprobs import TileMatmul, output_log_probs_and_entropy, token_log_probs_and_entropy
from mindrl.models.sparse_embedding import use_sparse_embedding_grad
from mindrl.models.workspace import reuse_workspace


@dataclass
class OptimConfig:
    lr: float = 1e-6
    min_lr: float = 0.0
    lr_decay_style: str = "constant"  # constant | linear | cosine (megatron's names)
    lr_warmup_steps: int = 0
    lr_decay_steps: int = 1
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = False


@dataclass
class MegatronModel:
    """A built model on this rank: chunks (one per virtual stage), wrapped for training or not."""

    plan: ModelPlan
    chunks: list[torch.nn.Module]
    optimizer: Any = None
    scheduler: Any = None  # megatron OptimizerParamScheduler

    @property
    def unwrapped(self) -> list[torch.nn.Module]:
        return [_gpt_model(chunk) for chunk in self.chunks]


def setup_model(plan: ModelPlan, core_attention: type, *, train: bool = True,
                optim: OptimConfig | None = None, lora: LoRASpec | None = None, lora_seed: int = 0,
                sparse_embedding_grad: bool = False) -> MegatronModel:
    """Build this rank's chunks; for training wrap them in megatron DDP and make the optimizer.
    `lora` (rank > 0): the base is frozen and fp32 adapters are added (mindrl.models.lora) after the
    half-precision wrapping and before DDP, so DDP's buffers and the optimizer hold adapters only.
    `sparse_embedding_grad` (the backend's choice): the word embedding's weight gradient holds the looked-up
    rows only (mindrl.models.sparse_embedding)."""
    chunks: list[torch.nn.Module] = build_model(plan, core_attention)
    if train and sparse_embedding_grad:
        use_sparse_embedding_grad(chunks)
    config = plan.config
    if config.bf16 or config.fp16:
        chunks = [Float16Module(config, c) for c in chunks]
    if lora is not None and lora.enabled:
        apply_lora(chunks, lora, plan.hf, lora_seed)
    if not train:
        for c in chunks:
            c.eval()
            c.requires_grad_(False)
        return MegatronModel(plan, chunks)
    optim = optim or OptimConfig()
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=optim.use_distributed_optimizer)
    chunks = [DistributedDataParallel(config=config, ddp_config=ddp_config, module=c,
                                      disable_bucketing=i > 0) for i, c in enumerate(chunks)]
    config.no_sync_func = [c.no_sync for c in chunks] if len(chunks) > 1 else chunks[0].no_sync
    config.finalize_model_grads_func = finalize_model_grads
    optimizer = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=optim.lr, weight_decay=optim.weight_decay, adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2, adam_eps=optim.adam_eps, clip_grad=optim.clip_grad,
        bf16=config.bf16, fp16=config.fp16, params_dtype=config.params_dtype,
        use_distributed_optimizer=optim.use_distributed_optimizer), chunks)
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0 if optim.lr_warmup_steps else optim.lr, max_lr=optim.lr, min_lr=optim.min_lr,
        lr_warmup_steps=optim.lr_warmup_steps, lr_decay_steps=max(optim.lr_decay_steps, optim.lr_warmup_steps + 1),
        lr_decay_style=optim.lr_decay_style, start_wd=optim.weight_decay, end_wd=optim.weight_decay,
        wd_incr_steps=1, wd_incr_style="constant")
    return MegatronModel(plan, chunks, optimizer, scheduler)


# A forward step gets (model chunk, micro-batch dict) and returns (output, loss_fn(output)).
LossFn = Callable[[torch.Tensor], tuple]


def forward_backward(model: MegatronModel, micro_batches: list[dict[str, torch.Tensor]],
                     forward: Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, LossFn]],
                     *, forward_only: bool = False) -> list[Any]:
    """Run megatron's schedule (no-pipelining, 1F1B or interleaved) over the micro-batches.

    Returns the loss functions' reported values from the last pipeline stage ([] elsewhere).
    Every micro-batch must have the same [batch, seq] shape within a call (megatron's p2p
    buffers are sized once per call), which the callers guarantee by padding.
    """
    batch, seq = micro_batches[0]["tokens"].shape
    num_chunks = len(model.chunks)

    def step(data_iterator: Iterator, chunk: torch.nn.Module) -> tuple:
        output, loss_fn = forward(chunk, next(data_iterator))
        return output, loss_fn

    iterators: Any = iter(micro_batches) if num_chunks == 1 else [iter(micro_batches) for _ in range(num_chunks)]
    if not forward_only:
        for chunk in model.chunks:
            chunk.zero_grad_buffer()
        model.optimizer.zero_grad()
    with reuse_workspace():  # the fused output layer's big scratch buffers serve every micro-batch
        return get_forward_backward_func()(
            forward_step_func=step, data_iterator=iterators, model=model.chunks,
            num_microbatches=len(micro_batches), seq_length=seq, micro_batch_size=batch, forward_only=forward_only)


def _gpt_model(chunk: torch.nn.Module) -> torch.nn.Module:
    """The megatron GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def _returns_hidden(model: torch.nn.Module) -> bool:
    """Whether `gpt_forward(..., hidden_states=True)` gives this GPTModel's final hidden states."""
    return bool(model.post_process) and not getattr(model, "mtp_process", False)


def _output_weight(model: torch.nn.Module) -> torch.Tensor:
    """The output layer's weight for the fused paths. Tied: the word embedding when this stage holds it, else the
    last stage's synced copy."""
    return (model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights
            else model.output_layer.weight)


def gpt_forward(chunk: torch.nn.Module, batch: dict[str, torch.Tensor], *, hidden_states: bool = False
                ) -> torch.Tensor:
    """Logits [b, s, vocab/TP] on the last stage, hidden states elsewhere.

    `hidden_states=True`: the last stage returns the final (layer-normed) hidden states [s, b, h]
    instead of logits, for `output_log_probs` to apply the output layer fused with the log-probs on
    the positions that need them. How: megatron's GPTModel returns the decoder's output untouched
    when its `post_process` is False (what a PP middle stage does); the decoder's final layernorm is
    the TransformerBlock's own (built with its own post_process), so it still runs. The flag is
    flipped for this forward call only; the output layer, its weight and the tied-embedding wiring
    are untouched, so DDP, finalize_model_grads and checkpoints see the same model. MTP models keep
    the logits path (their MTP block runs inside the output processing)."""
    tokens = batch["tokens"]
    positions = batch.get("position_ids")
    if positions is None:
        positions = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
    # Packed micro-batches (`actor.pack_rows`): megatron's thd layout, sequences' bounds in here.
    extra = {"packed_seq_params": batch["packed_seq_params"]} if "packed_seq_params" in batch else {}
    model = _gpt_model(chunk)
    if not (hidden_states and _returns_hidden(model)):
        return chunk(tokens, positions, batch.get("attention_mask"), **extra)
    model.post_process = False
    try:
        return chunk(tokens, positions, batch.get("attention_mask"), **extra)
    finally:
        model.post_process = True


def output_log_probs(chunk: torch.nn.Module, output: torch.Tensor, labels: torch.Tensor, vocab_size: int, *,
                     select: torch.Tensor | None = None, temperature: float = 1.0, compiled: bool = False,
                     entropy: bool = True, matmul: TileMatmul | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs, entropy) [b, s] at `select`ed positions (0 elsewhere) from the last stage's
    `gpt_forward(chunk, batch, hidden_states=True)` output: the chunk's output layer fused with the
    chunked vocab-parallel log-softmax (mindrl.models.logprobs.output_log_probs_and_entropy; `compiled`:
    its tiles' elementwise work in compiled kernels). `entropy=False`: None in the entropy's place where
    the fused path can skip it. `matmul`: the backend's kernel for the logits tiles (`Backend.logits_matmul`)."""
    model = _gpt_model(chunk)
    if _returns_hidden(model):
        return output_log_probs_and_entropy(output, _output_weight(model), labels, vocab_size, select=select,
                                            temperature=temperature, compiled=compiled, entropy=entropy,
                                            sequence_parallel=model.output_layer.sequence_parallel, matmul=matmul)
    # Logits (an MTP model): the unfused path.
    logp, ent = token_log_probs_and_entropy(output, labels, vocab_size, temperature=temperature)
    if select is not None:
        logp, ent = logp * select, ent * select
    return logp, ent


def output_loss(chunk: torch.nn.Module, output: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, select: torch.Tensor | None = None,
                temperature: float = 1.0, compiled: bool = False, entropy_grad: bool = False, upstream: float = 1.0,
                matmul: TileMatmul | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, log-probs, entropy): `output_log_probs` with the loss `loss_of(logp, entropy)` fused in, its output
    layer's gradient computed in the forward (mindrl.models.fused_loss.output_loss); log-probs and entropy [b, s]
    detached, for metrics. `entropy_grad`: the loss depends on the entropy. `upstream`: the gradient megatron's
    schedule will bring to the returned loss; under DDP the weight's gradient goes straight into its main_grad
    (megatron's gradient-accumulation-fusion convention)."""
    model = _gpt_model(chunk)
    if _returns_hidden(model):
        weight = _output_weight(model)
        # the tied embedding on this stage also gets the lookup's gradient: DDP's hook must still add that one
        tied_here = bool(model.share_embeddings_and_output_weights and model.pre_process)
        return fused_output_loss(output, weight, labels, vocab_size, loss_of, select=select,
                                 temperature=temperature, compiled=compiled, entropy_grad=entropy_grad,
                                 sequence_parallel=model.output_layer.sequence_parallel,
                                 main_grad=getattr(weight, "main_grad", None), upstream=upstream,
                                 dummy_grad=not tied_here, matmul=matmul)
    logp, ent = output_log_probs(chunk, output, labels, vocab_size, select=select, temperature=temperature)
    return loss_of(logp, ent if entropy_grad else ent.detach()), logp.detach(), ent.detach()


def next_token_loss_forward(vocab_size: int) -> Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple]:
    """A `forward` for `forward_backward`: mean -log p(labels) over the micro-batch (over `loss_mask`
    where the batch has one). Reports `{"loss": ...}` per micro-batch. Used for SFT-style steps."""

    def forward(chunk: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, LossFn]:
        output = gpt_forward(chunk, batch, hidden_states=True)

        def loss_fn(hidden: torch.Tensor) -> tuple:
            mask = batch.get("loss_mask")
            logp = output_log_probs(chunk, hidden, batch["labels"], vocab_size,
                                    select=None if mask is None else mask.bool())[0]
            loss = -logp.mean() if mask is None else -(logp * mask).sum() / mask.sum()
            return loss, {"loss": loss.detach().clone()}  # megatron scales `loss` in place
        return output, loss_fn
    return forward


def data_parallel_slice(tensor: torch.Tensor) -> torch.Tensor:
    """This data-parallel rank's rows of a global batch (equal split)."""
    dp, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    if tensor.shape[0] % dp:
        raise ValueError(f"batch of {tensor.shape[0]} rows does not split over {dp} data-parallel ranks")
    return tensor.chunk(dp)[rank]


__all__ = ["MegatronModel", "OptimConfig", "data_parallel_slice", "forward_backward", "gpt_forward",
           "next_token_loss_forward", "output_log_probs", "setup_model"]
