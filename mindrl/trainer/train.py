"""Set up a GRPO run on this rank and loop over steps: resume, step, log, checkpoint."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from mindrl.backends import get_backend
from mindrl.backends.distributed import destroy_distributed
from mindrl.config import MindRLConfig
from mindrl.rollout import build_rollout
from mindrl.trainer.checkpointing import latest_step, load_checkpoint, save_checkpoint
from mindrl.trainer.grpo import Run, TrainingError, grpo_step, restore_trainer_state, trainer_state
from mindrl.trainer.tracking import Tracker
from mindrl.workers.actor import PolicyWorker
from mindrl.workers.bringup import PolicySpec, build_policy, frozen_copy, optim_config, policy_plan

log = logging.getLogger("mindrl")


def _load_initial_weights(cfg: MindRLConfig, chunks: list[torch.nn.Module], plan: Any) -> None:
    """`actor_config.load`: a megatron checkpoint from tools/convert_ckpt.py, in this layout."""
    if not cfg.actor_config.load:
        return
    from mindrl.checkpoint.live import load_megatron_checkpoint

    load_megatron_checkpoint(chunks, cfg.actor_config.load)


def checkpoint_root(cfg: MindRLConfig) -> Path:
    """`actor_config.save` (MindSpeed-RL's checkpoint directory), else `<output_dir>/checkpoints`.
    Training checkpoints are written there and a rerun resumes from there."""
    save = cfg.actor_config.save
    return Path(save) if save else Path(cfg.megatron_training.output_dir) / "checkpoints"


def policy_worker(cfg: MindRLConfig, model: Any, adapters: bool = True) -> PolicyWorker:
    """The actor and the reference share their micro-batching and sampling temperature, and the backend's kernel
    for the output layer's logits tiles in the model's dtype."""
    matmul = get_backend(cfg.backend).logits_matmul(model.plan.config.params_dtype)
    return PolicyWorker(model, micro_batch_size=cfg.actor_config.micro_batch_size, logits_matmul=matmul,
                        temperature=cfg.generate_config.sampling_config.temperature,
                        max_tokens_per_micro_batch=cfg.actor_config.max_tokens_per_micro_batch, adapters=adapters,
                        use_torch_compile=cfg.actor_config.use_torch_compile,
                        compiled_logprob_tiles=cfg.actor_config.compiled_logprob_tiles,
                        head_grad_in_forward=cfg.actor_config.head_grad_in_forward)


def rollout_train_state(gen_cfg: Any, backend: Any, actor_model: Any) -> Any:
    """What the rollout offloads around its awake phase: the actor's training state when
    `generate_config.offload_train_state` (validate() checked the rollout has its own weights), else None."""
    if not gen_cfg.offload_train_state:
        return None
    from mindrl.backends.offload import TrainStateOffload

    return TrainStateOffload(backend, actor_model.chunks, actor_model.optimizer)


def lora_adapter_push(cfg: MindRLConfig, spec: PolicySpec) -> Any:
    """The actor's LoRASpec when its adapters are pushed to vLLM as a LoRA (actor_config.lora.merge=false),
    else None (pushes carry merged weights)."""
    return spec.lora if spec.lora is not None and not cfg.actor_config.lora.merge else None


def _build_vllm_first(cfg: MindRLConfig, spec: PolicySpec, plan: Any, backend: Any) -> Any:
    """The process groups `build_policy` would create (it keeps them), then this rank's vLLM engine."""
    from mindrl.backends.distributed import init_distributed
    from mindrl.rollout.factory import build_vllm

    init_distributed(backend, tp=spec.layout.tp, pp=spec.layout.pp, ep=spec.layout.ep,
                     vpp=plan.config.virtual_pipeline_model_parallel_size, seed=spec.seed)
    return build_vllm(cfg.generate_config, plan.hf, plan.config.params_dtype, seed=cfg.megatron_training.seed,
                      train_tp=spec.layout.tp, train_ep=spec.layout.ep,
                      tokenizer_path=cfg.megatron_training.tokenizer_name_or_path,
                      lora_adapter=lora_adapter_push(cfg, spec))


def setup(cfg: MindRLConfig) -> Run:
    from transformers import AutoTokenizer

    from mindrl.data import PromptDataset

    backend = get_backend(cfg.backend)
    mt, rl = cfg.megatron_training, cfg.rl_config
    spec = PolicySpec.from_config(cfg)
    # The model's plan (megatron config and layout), made once: vLLM's start-up, the actor and the
    # checkpoint metadata below all read this one.
    plan = policy_plan(spec, backend)
    layout = plan.layout
    # vLLM first: at start-up it requires gpu_memory_utilization x the device's memory to be free, and
    # then sleeps (where the platform can) before the actor, reference and optimizer take the device.
    vllm_engine = _build_vllm_first(cfg, spec, plan, backend) if cfg.generate_config.engine == "vllm" else None
    actor_model = build_policy(spec, backend, optim=optim_config(cfg), plan=plan)
    if mt.global_batch_size % ps.get_data_parallel_world_size():
        raise TrainingError(f"global_batch_size={mt.global_batch_size} must split over "
                            f"{ps.get_data_parallel_world_size()} data-parallel ranks")
    _load_initial_weights(cfg, actor_model.unwrapped, plan)
    reference = None
    lora = spec.lora
    if (rl.use_kl_loss or rl.kl_coef) and lora is not None:
        # LoRA: the reference is the frozen base, i.e. the actor with its adapters disabled (B starts at
        # zero, so that is also the initial policy); no second copy of the weights.
        reference = policy_worker(cfg, actor_model, adapters=False)
    elif rl.use_kl_loss or rl.kl_coef:
        # The reference is the frozen initial policy: the same weights, copied before any update.
        ref_model = frozen_copy(actor_model, backend)
        reference = policy_worker(cfg, ref_model)
    actor = policy_worker(cfg, actor_model)
    tokenizer = AutoTokenizer.from_pretrained(mt.tokenizer_name_or_path)
    gen_cfg = cfg.generate_config
    train_state = rollout_train_state(gen_cfg, backend, actor_model)
    engine = build_rollout(gen_cfg, plan=plan, actor_chunks=actor_model.chunks, tokenizer=tokenizer,
                           core_attention=backend.core_attention_cls(), seed=mt.seed,
                           use_cpu_initialization=backend.use_cpu_initialization,
                           make_vocab_size_divisible_by=cfg.model.make_vocab_size_divisible_by,
                           tokenizer_path=mt.tokenizer_name_or_path, train_state=train_state, engine=vllm_engine,
                           backend=backend, lora_adapter=lora_adapter_push(cfg, spec))
    output_dir = Path(mt.output_dir)
    ckpt_root = checkpoint_root(cfg)
    expected = {"architecture": plan.hf.get("model_type"), "world_size": dist.get_world_size(),
                "layout": {"tp": layout.tp, "pp": layout.pp, "ep": layout.ep, "num_layer_list": layout.num_layer_list,
                           "vpp": plan.config.virtual_pipeline_model_parallel_size},
                # LoRA checkpoints hold adapters only: their config and the base they sit on (export reads both).
                "lora": lora.to_dict() if lora is not None else None,
                "base_load": cfg.actor_config.load if lora is not None else None}
    start_step, consumed = 0, 0
    resume = latest_step(ckpt_root)
    if resume is not None:
        state = load_checkpoint(ckpt_root, resume, actor_model, expected)
        start_step, consumed = state["step"], state["consumed_samples"]
    dataset = PromptDataset(mt.data_path, consumed_samples=consumed, shuffle=not mt.no_shuffle, seed=mt.seed)
    dataset.check_tokenizer(tokenizer)
    reward_fn = None
    if dist.get_rank() == dist.get_process_group_ranks(ps.get_model_parallel_group())[0]:
        from mindrl.rewards import build_reward_fn

        reward_fn = build_reward_fn(rl.verifier_function, rl.verifier_weight, rl.verifier_options,
                                    timeout=rl.verifier_timeout, num_workers=rl.verifier_parallel,
                                    fallback=rl.verifier_fallback)
    tracker = None
    if dist.get_rank() == 0:
        tracker = Tracker(output_dir, resume_step=start_step, use_tensorboard=rl.use_tensorboard,
                          use_swanlab=rl.use_swanlab, config=dataclasses.asdict(cfg))
    return Run(cfg=cfg, actor=actor, reference=reference, engine=engine, tokenizer=tokenizer, dataset=dataset,
               reward_fn=reward_fn, tracker=tracker, output_dir=output_dir, start_step=start_step, expected=expected)


def train(cfg: MindRLConfig) -> dict[str, Any]:
    """Run (or resume) the whole training on this rank. Returns the last step's metrics."""
    run = setup(cfg)
    mt, rl = cfg.megatron_training, cfg.rl_config
    ckpt_root = checkpoint_root(cfg)
    if run.start_step:
        restore_trainer_state(run, ckpt_root / f"iter_{run.start_step:07d}")
    progress = _progress(run, mt.train_iters)
    metrics: dict[str, Any] = {}
    for step in range(run.start_step + 1, mt.train_iters + 1):
        metrics = grpo_step(run, step)
        if metrics.get("actor/skipped", 0.0) > 0:
            run.bad_steps_in_a_row += 1
            metrics["bad_step"] = 1.0
        else:
            run.bad_steps_in_a_row = 0
        if run.tracker is not None:
            run.tracker.log(step, metrics)
        if run.bad_steps_in_a_row >= rl.max_bad_steps_in_a_row:
            raise TrainingError(f"step {step}: non-finite loss {run.bad_steps_in_a_row} steps in a row (those updates "
                                f"were skipped); lower actor_config.lr or check the data and rewards")
        if progress is not None:
            progress.update(step, metrics)
        if mt.save_interval and (step % mt.save_interval == 0 or step == mt.train_iters):
            save_checkpoint(ckpt_root, step, run.actor.model,
                            {**run.expected, "step": step, "consumed_samples": run.dataset.consumed_samples,
                             **trainer_state(run)},
                            keep_last=rl.keep_last_checkpoints, tokenizer_dir=mt.tokenizer_name_or_path)
    if progress is not None:
        progress.close()
    if run.tracker is not None:
        run.tracker.close()
    if run.reward_fn is not None:
        run.reward_fn.close()
    run.engine.close()  # vLLM tears down its process groups (and the world) itself, before ours go
    destroy_distributed()
    return metrics


class _Progress:
    """A rich progress bar with ETA and the headline metrics (rank 0 only)."""

    def __init__(self, total: int, start: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]GRPO"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"), refresh_per_second=2)
        self.bar.start()
        self.task = self.bar.add_task("grpo", total=total, completed=start, info="")
        self.plain = not self.bar.console.is_terminal

    def update(self, step: int, m: dict[str, Any]) -> None:
        info = (f"reward {m.get('reward/mean', 0):.3f}  len {m.get('response_length/mean', 0):.0f}  "
                f"kl {m.get('kl', 0):.4f}  {m.get('time/step', 0):.1f}s/step")
        self.bar.update(self.task, completed=step, info=info)
        if self.plain:  # logs and CI: one concise line per step instead of a redrawn bar
            self.bar.console.print(f"step {step}: {info}")

    def close(self) -> None:
        self.bar.stop()


def _progress(run: Run, total: int) -> _Progress | None:
    return _Progress(total, run.start_step) if dist.get_rank() == 0 else None
