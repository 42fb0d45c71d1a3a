"""`validate(cfg)`: every problem with a config, one clear line each, before any worker starts."""
from __future__ import annotations

import glob
from pathlib import Path

from mindrl.config.loader import ConfigError
from mindrl.config.schema import MindRLConfig
from mindrl.models.hf_config import HFConfig, load_hf_config, scale_down
from mindrl.models.layout import ParallelLayout

BACKEND_NAMES = ("auto", "cuda", "npu", "cpu")
# generate_config.engine -> the packages it needs (mindrl.rollout.ROLLOUT_ENGINES has the same names;
# tests/rollout/test_rollout_config.py keeps the two in step).
ENGINE_PACKAGES: dict[str, tuple[str, ...]] = {"builtin": (), "vllm": ("vllm",)}
GENERATE_DTYPES = ("auto", "bfloat16", "float16", "float32")
GROUP_ESTIMATORS = ("group_norm", "grpo", "dr_grpo")


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


def validate(cfg: MindRLConfig, check_paths: bool = True) -> list[str]:
    """All problems found (empty when the config is good). `check_config` raises instead."""
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
        if cfg.model.mtp_num_layers and hf.get("model_type") != "deepseek_v3":
            errors.append(f"model.mtp_num_layers={cfg.model.mtp_num_layers}: MTP exists only for deepseek_v3")
        elif cfg.model.mtp_num_layers:
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
    if rl.adv_estimator in GROUP_ESTIMATORS and rl.n_samples_per_prompt < 2:
        errors.append(f"rl_config.n_samples_per_prompt={rl.n_samples_per_prompt}: GRPO compares samples within a "
                      f"group and needs at least 2")
    if len(rl.verifier_function) != len(rl.verifier_weight):
        errors.append(f"rl_config.verifier_function has {len(rl.verifier_function)} entries but verifier_weight "
                      f"has {len(rl.verifier_weight)}")
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
    elif rl.max_prompt_length + s.max_tokens > cfg.generate_config.max_model_len:
        errors.append(f"rl_config.max_prompt_length + sampling_config.max_tokens = "
                      f"{rl.max_prompt_length + s.max_tokens} exceeds generate_config.max_model_len="
                      f"{cfg.generate_config.max_model_len}")
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
                      f"(pip install -e .[gpu], or .[npu] plus vllm-ascend; see docs/hardware.md), or use "
                      f"engine=builtin")
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
        heads = int(hf.get("num_attention_heads", 0))
        experts = hf.get("n_routed_experts") or hf.get("num_experts") or hf.get("num_local_experts")
        errors += _rollout_layout_errors(tp, ep, heads, int(hf.get("num_key_value_heads") or heads),
                                         int(experts) if experts else None, world)
        if g.engine == "vllm" and ep > 1 and ep % tp:
            errors.append(f"generate_config.infer_expert_parallel_size={ep} must be a multiple of "
                          f"infer_tensor_parallel_size={tp} for engine=vllm (vLLM splits experts over TP x DP)")
    return errors


def _rollout_layout_errors(tp: int, ep: int, heads: int, kv_heads: int, experts: int | None, world: int) -> list[str]:
    """mindrl.rollout.parallel.RolloutLayout on this model and world: TP x EP, PP = 1, replicas whole."""
    if tp < 1 or ep < 1:
        return [f"generate_config.infer_tensor_parallel_size={tp} and infer_expert_parallel_size={ep} must be >= 1"]
    errors = []
    if heads % tp:
        errors.append(f"generate_config.infer_tensor_parallel_size={tp} does not divide num_attention_heads={heads}")
    elif kv_heads % tp:
        errors.append(f"generate_config.infer_tensor_parallel_size={tp} does not divide num_key_value_heads={kv_heads}")
    if tp > world:
        errors.append(f"generate_config.infer_tensor_parallel_size={tp} needs more ranks than the {world} of "
                      f"rl_config.actor_resource.num_npus: not even one rollout replica fits")
    elif world % tp:
        errors.append(f"generate_config.infer_tensor_parallel_size={tp} does not divide the world size {world}: "
                      f"the rollout replicas would not be whole")
    if ep > 1 and not experts:
        errors.append(f"generate_config.infer_expert_parallel_size={ep} but the model has no experts")
    elif experts and experts % ep:
        errors.append(f"generate_config.infer_expert_parallel_size={ep} does not divide num_experts={experts}")
    elif ep > 1 and world % (tp * ep):
        errors.append(f"generate_config: infer_tensor_parallel_size x infer_expert_parallel_size = {tp} x {ep} does "
                      f"not divide the world size {world} (experts are split over TP x EP ranks)")
    return errors


def check_config(cfg: MindRLConfig, check_paths: bool = True) -> MindRLConfig:
    """Raise ConfigError listing every problem, or return the config unchanged."""
    errors = validate(cfg, check_paths=check_paths)
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
    return cfg
