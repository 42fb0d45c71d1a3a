"""Typed configuration, in MindSpeed-RL's sections so its users feel at home.

    backend: auto | cuda | npu | cpu
    model: <name>                      # configs/model/<name>.yaml, merged into `model`
    megatron_training: {...}           # data, tokenizer, batch, schedule, save/load
    actor_config: {...}                # the policy's parallel layout and optimizer
    rl_config: {...}                   # GRPO: samples, KL, clipping, scorers, resources
    generate_config: {...}             # rollout engine and sampling

Every field has a type and a default; YAML keys not declared here are errors (with a
"did you mean"), caught by `mindrl.config.loader` before anything starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ModelConfig:
    """Which model: an HF config.json (a path) or the HF fields inline (`hf_config`)."""

    name: str = ""
    # Path to an HF model directory or its config.json. Wins over `hf_config` when set.
    hf_config_path: Optional[str] = None
    # The HF config.json fields inline (model_type, hidden_size, ...), for configs/model/*.yaml.
    hf_config: dict[str, Any] = field(default_factory=dict)
    # Shrink the model for tests and demos: keys of mindrl.models.scale_down (num_layers, ...).
    scale_down: dict[str, Any] = field(default_factory=dict)
    make_vocab_size_divisible_by: int = 128
    mtp_num_layers: int = 0


@dataclass
class MegatronTrainingConfig:
    tokenizer_name_or_path: Optional[str] = None
    data_path: Optional[str] = None  # output_prefix of `examples/data/preprocess_data.sh`
    global_batch_size: int = 8  # prompts per GRPO step
    # The longest sequence (prompt + response tokens) the actor trains on, as in MindSpeed-RL: validate()
    # checks rl_config.max_prompt_length + sampling_config.max_tokens fits, the trainer refuses a longer batch.
    seq_length: int = 2048
    train_iters: int = 100
    save_interval: int = 50
    seed: int = 1234
    bf16: bool = False
    use_distributed_optimizer: bool = False
    sequence_parallel: bool = False
    recompute: bool = False
    no_shuffle: bool = False
    output_dir: str = "output/run"


@dataclass
class LoRAConfig:
    """LoRA on the actor (docs/lora.md): adapters on a frozen base; the reference is the base itself."""

    rank: int = 0  # 0: off (full fine-tuning)
    alpha: float = 16.0  # scaling = alpha / rank (alpha / sqrt(rank) with use_rslora)
    dropout: float = 0.0  # on the adapters' input, as peft's lora_dropout
    # peft's names: q_proj k_proj v_proj (inside the fused QKV) o_proj gate_proj up_proj (fused fc1) down_proj
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
    use_rslora: bool = False
    # How pushes to a rollout with its own weights (engine=vllm) carry the adapters, verl's `lora.merge`:
    # true: merged weights W + s·B@A (any engine); false: the base once, then only the adapters each step as
    # a vLLM LoRA (enable_lora + LoRARequest; engine=vllm only). The built-in engine sharing the actor's
    # weights runs the adapters unmerged either way (docs/lora.md).
    merge: bool = True
    # A 4-bit base (QLoRA: "nf4" / "int4"): refused by validate() — no NF4/int4 library runs here.
    quantize_base: Optional[str] = None


@dataclass
class ActorConfig:
    load: Optional[str] = None  # megatron checkpoint to start from (tools/convert_ckpt.py output)
    # Where training checkpoints go (and a rerun resumes from); None: <output_dir>/checkpoints.
    save: Optional[str] = None
    micro_batch_size: int = 1
    # Token-budget micro-batches (verl use_dynamic_bsz, slime --max-tokens-per-gpu): at most this many
    # real tokens per micro-batch, its sequences packed into one row without padding (multi-latent
    # attention models: length-sorted right-padded groups, rows x longest row <= this instead).
    # None: fixed micro_batch_size rows, right-padded.
    max_tokens_per_micro_batch: Optional[int] = None
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    expert_model_parallel_size: int = 1
    num_layer_list: Optional[list[int]] = None
    num_layers_per_virtual_pipeline_stage: Optional[int] = None
    lr: float = 1e-6
    min_lr: float = 0.0
    lr_decay_style: str = "constant"
    lr_warmup_fraction: float = 0.0
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    # torch.compile (inductor) of the transformer layers in the training forwards (update, old and reference
    # log-probs), forward and backward; the rollout stays eager. verl's actor.use_torch_compile. Compile time
    # is paid once per process (docs/benchmarks.md: what it gains here); validate() refuses the layouts and
    # models it was not run with (mindrl/models/compile.py).
    use_torch_compile: bool = False
    # The fused output layer's per-tile elementwise work (the online log-sum-exp and entropy sums in the forwards,
    # the softmax gradient in the backward) as two torch.compile'd kernels instead of five or six eager passes
    # over each [tokens, vocab columns] tile (mindrl/models/logprob_tiles.py); same values up to fp32 summation
    # order. Compiled once per process (seconds). CPU backend only (where it was measured: docs/benchmarks.md).
    compiled_logprob_tiles: bool = False
    # The update's output layer takes the loss in: per block of tokens the logits are computed once and turned
    # into their gradient right away, from the loss's per-token gradient (three matmuls of tokens x hidden x
    # vocab instead of four: no logits recomputed in the backward). Exact where the loss is a sum of per-token
    # terms, which is checked every micro-batch; elsewhere (GSPO) the gradients are recomputed from the true
    # per-token ones as with `false` (mindrl/models/fused_loss.py). `false`: the log-probs' own backward.
    head_grad_in_forward: bool = True


@dataclass
class ResourceConfig:
    num_npus: int = 1  # MindSpeed-RL's name; means accelerators (or CPU ranks) on any backend


@dataclass
class FilterGroupsConfig:
    """DAPO dynamic sampling: drop prompt groups whose `metric` is the same for every sample, and generate
    more rounds until the step has global_batch_size informative groups or `max_num_gen_batches` rounds ran
    (then it trains on what there is, with a warning). docs/algorithms.md section 6."""

    enable: bool = False
    metric: str = "reward"  # "reward" (the weighted total) or one of rl_config.verifier_function (e.g. acc)
    max_num_gen_batches: int = 10  # generation rounds per step at most (>= 1)


@dataclass
class KLControlConfig:
    """The KL coefficient's controller when the KL penalty is in the reward (`use_kl_in_reward`)."""

    type: str = "fixed"  # fixed | adaptive (Ziegler et al. 2019)
    target_kl: float = 0.1  # adaptive: the KL the controller steers to
    horizon: int = 10000  # adaptive: samples over which beta moves by at most 20%


@dataclass
class RolloutISConfig:
    """Truncated importance sampling between the rollout engine's and the trainer's log-probs."""

    enable: bool = False
    level: str = "token"  # token | sequence
    threshold: float = 2.0  # weights are min(pi_train / pi_rollout, threshold)


@dataclass
class LauncherConfig:
    """How ranks are started and stopped (mindrl.cli.train_grpo, mindrl.launch; docs/multinode.md)."""

    # Timeout of every process group (its collectives and rendezvous): the world group, megatron's
    # training groups, the rollout layout's groups, and vLLM's groups when the vLLM adapter passes
    # mindrl.backends.distributed.vllm_timeout_kwargs(); a dead or stuck peer raises, never hangs.
    collective_timeout_s: float = 1800.0
    failure_timeout_s: float = 60.0  # Ray: after a rank dies or raises, all ranks are stopped within this
    placement_timeout_s: float = 120.0  # Ray: devices not reserved by then -> error naming per-node counts
    node_join_timeout_s: float = 600.0  # Ray per-node scripts: the head waits this long for the other nodes


@dataclass
class RLConfig:
    n_samples_per_prompt: int = 8
    mini_batch_size: Optional[int] = None  # prompts per policy update; None = global batch
    epochs: int = 1
    # grpo (= group_norm) | dr_grpo | rloo | reinforce_plus_plus | reinforce_plus_plus_baseline | grpo_passk
    adv_estimator: str = "grpo"
    # Options of the estimator (docs/algorithms.md): grpo / group_norm / grpo_passk take std_unbiased (bool) and
    # epsilon; reinforce_plus_plus takes gamma (the discount); the others none. validate() refuses any other.
    adv_estimator_options: dict[str, Any] = field(default_factory=dict)
    policy_loss: str = "vanilla"  # vanilla (clip, dual-clip) | gspo | cispo
    kl_penalty: str = "low_var_kl"  # the KL estimator, for the loss term and the reward penalty alike
    use_kl_loss: bool = True  # KL to the reference as a loss term, weighted by kl_coef
    use_kl_in_reward: bool = False  # KL penalty in the token-level reward, beta from kl_ctrl (starts at kl_coef)
    kl_coef: float = 0.001
    kl_ctrl: KLControlConfig = field(default_factory=KLControlConfig)
    clip_ratio: float = 0.2
    clip_ratio_low: Optional[float] = None
    clip_ratio_high: Optional[float] = None
    clip_ratio_c: Optional[float] = None  # dual-clip bound (> 1) for policy_loss vanilla; None = off
    entropy_coeff: float = 0.0
    loss_agg_mode: str = "token-mean"
    filter_groups: FilterGroupsConfig = field(default_factory=FilterGroupsConfig)
    overlong_filter: bool = False  # mask responses cut at max_tokens out of the loss (DAPO)
    rollout_is: RolloutISConfig = field(default_factory=RolloutISConfig)
    max_prompt_length: int = 1024
    verifier_function: list[str] = field(default_factory=lambda: ["base_acc"])
    verifier_weight: list[float] = field(default_factory=lambda: [1.0])
    # Per-scorer options, e.g. {format: {prefix: "<think>"}, think_len: {min_chars: 1000}}.
    verifier_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    verifier_timeout: float = 1.0  # CPU seconds per item and scorer (the sandbox kills a stuck worker)
    verifier_parallel: int = 2
    verifier_fallback: float = 0.0
    actor_resource: ResourceConfig = field(default_factory=ResourceConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    use_tensorboard: bool = False
    use_swanlab: bool = False
    keep_last_checkpoints: int = 2
    # validate()'s memory check (mindrl.plan): refuse a job whose plan does not fit the devices. True skips it.
    skip_memory_check: bool = False
    max_bad_steps_in_a_row: int = 3  # NaN/inf losses: skip the step; stop after this many in a row
    log_samples_interval: int = 10  # write a few completions to completion_samples.jsonl every N steps


@dataclass
class SamplingConfig:
    """mindrl.rollout.SamplingParams for every rollout (n is rl_config.n_samples_per_prompt)."""

    max_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    stop: list[str] = field(default_factory=list)
    detokenize: bool = False


@dataclass
class GenerateConfig:
    """The rollout: engine, layout, limits. See docs/rollout.md."""

    engine: str = "builtin"  # builtin | vllm (mindrl.rollout.ROLLOUT_ENGINES)
    # Rollout layout: TP x EP with PP = 1; the remaining ranks are data-parallel replicas.
    # None = the training value. Equal to the training layout (and dtype), the built-in engine shares
    # the actor's weights; otherwise they are pushed to the rollout copy after every update.
    infer_tensor_parallel_size: Optional[int] = None
    infer_expert_parallel_size: Optional[int] = None
    max_num_seqs: int = 256  # rows (prompts x samples) per batch
    max_model_len: int = 2048  # prompt + generated tokens, at most
    dtype: str = "auto"  # rollout weights: auto (the training dtype) | bfloat16 | float16 | float32
    # vllm only, as vLLM defines it: the fraction of the device's *total* memory this vLLM instance may use
    # (weights, activations, KV cache); vLLM refuses to start unless that much is free, so the trainer builds
    # it before the actor. On CPU: the fraction of the NUMA node's memory vLLM reserves (docs/rollout.md).
    gpu_memory_utilization: float = 0.9
    weight_bucket_mb: float = 512  # size of the buckets the training -> rollout weight push moves
    # Move the optimizer state (and main params, freeing the grad buffers) to host memory before the
    # rollout engine wakes up, and back after it sleeps; bit-exact. Only with a rollout of its own
    # weights (vllm, or a built-in copy in another layout / dtype). See docs/rollout.md.
    offload_train_state: bool = False
    # builtin only: every linear of the rollout (the layers' and the LM head's) runs on its weight packed once per
    # generate call into the backend's own layout (CPU: oneDNN's blocked layout, as vLLM-CPU does); the packing is
    # redone every call, since the weights change every step. None (default): on wherever the backend has a packed
    # linear for the rollout dtype (the CPU backend with oneDNN), off elsewhere; true: required (refused where the
    # backend has none); false: megatron's own matmuls. See docs/rollout.md.
    packed_linear: Optional[bool] = None
    # Built-in engine, TP=1, temperature sampling without top-k / top-p / min-p: the LM head runs one vocabulary
    # chunk at a time fused with the sampler (no full logits pass through memory; rows still inside their prompt
    # skip the LM head). The same distribution as the unfused sampler, up to fp rounding; other cases keep the
    # unfused path. See docs/rollout.md.
    fused_sampler: bool = False
    sampling_config: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class MindRLConfig:
    backend: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    megatron_training: MegatronTrainingConfig = field(default_factory=MegatronTrainingConfig)
    actor_config: ActorConfig = field(default_factory=ActorConfig)
    rl_config: RLConfig = field(default_factory=RLConfig)
    generate_config: GenerateConfig = field(default_factory=GenerateConfig)
