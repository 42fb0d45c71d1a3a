"""The one model bring-up: every program builds its policy through `workers.bringup.build_policy`,
which reads a training config in one place."""
from __future__ import annotations

import ast
from pathlib import Path

from mindrl.config import config_from_dict
from mindrl.workers.bringup import PolicySpec, optim_config

REPO = Path(__file__).resolve().parents[2]
TINY = {"name": "tiny", "hf_config": {"model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64,
                                      "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
                                      "vocab_size": 100}}


def test_nothing_else_sets_up_process_groups_or_builds_models():
    """`init_distributed` and `setup_model` are called only by bringup.py (one reference-model copy:
    `frozen_copy`), in the package, the benchmarks and the test workers alike."""
    offenders = []
    for path in sorted([*REPO.joinpath("mindrl").rglob("*.py"), *REPO.joinpath("benchmarks").rglob("*.py"),
                        *REPO.joinpath("tests").rglob("*.py"), *REPO.joinpath("tools").rglob("*.py")]):
        if path.name == "bringup.py" and path.parent.name == "workers":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in ("init_distributed", "setup_model", "build_model"):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} calls {name}")
    allowed = {"mindrl/workers/megatron_engine.py",  # setup_model itself calls build_model
               # The rollout copy in another layout: frozen chunks built inside the rollout parallel state
               # (no process groups of its own to set up: mindrl.rollout.parallel made them).
               "mindrl/rollout/factory.py",
               # The memory planner: the trainer's model, DDP and optimizer on one simulated rank, whose process
               # groups mindrl/plan/world.py made (a fake world: build_policy's init_distributed cannot run there).
               "mindrl/plan/ranks.py",
               # --suggest's lower bound: a one-layer-per-kind model on one simulated rank of the same fake world.
               "mindrl/plan/suggest.py",
               # megatron's own per-rank plan read off simulated ranks (the planner's fake world), compared
               # with the converter's plan_ranks: a model only, no process groups of its own.
               "tests/plan/rank_plan_worker.py"}
    # Process groups only, no model: the vocab-parallel log-prob kernels measured / checked alone, the
    # data-parallel sum of the advantage estimators, and every group's collective timeout.
    groups_only = {"benchmarks/step_parts.py", "tests/models/logprobs_worker.py", "tests/models/fused_head_worker.py",
                   "tests/models/fused_loss_worker.py", "tests/trainer/advantages_dp_worker.py", "tests/backends/group_timeout_worker.py",
                   # engine=vllm: the groups first, then vLLM, then build_policy (which keeps the groups)
                   "mindrl/trainer/train.py"}
    offenders = [o for o in offenders if not (o.split(":")[0] in groups_only and o.endswith("init_distributed"))]
    assert [o for o in offenders if o.split(":")[0] not in allowed] == []


def test_the_spec_and_optimizer_come_from_the_config():
    """What the sanity run used to drop (recompute, the LR schedule) comes from the same reader."""
    cfg = config_from_dict({
        "model": dict(TINY, make_vocab_size_divisible_by=8),
        "megatron_training": {"global_batch_size": 8, "train_iters": 10, "recompute": True, "bf16": True,
                              "seed": 7},
        "actor_config": {"tensor_model_parallel_size": 2, "lr": 3e-6, "min_lr": 1e-7, "lr_decay_style": "cosine",
                         "lr_warmup_fraction": 0.1, "weight_decay": 0.01, "clip_grad": 0.5},
        "rl_config": {"epochs": 2, "mini_batch_size": 4},
    })
    spec = PolicySpec.from_config(cfg)
    assert (spec.dtype, spec.recompute, spec.seed, spec.make_vocab_size_divisible_by) == ("bf16", True, 7, 8)
    assert (spec.layout.tp, spec.hf["hidden_size"]) == (2, 64)
    opt = optim_config(cfg)
    # 10 steps x 2 epochs x (8 / 4) mini-batches = 40 optimizer updates; 10% of them warm up.
    assert (opt.lr_decay_steps, opt.lr_warmup_steps) == (40, 4)
    assert (opt.lr, opt.min_lr, opt.lr_decay_style, opt.weight_decay, opt.clip_grad) == (3e-6, 1e-7, "cosine", 0.01, 0.5)
    assert optim_config(cfg, updates_per_iteration=1).lr_decay_steps == 10  # the sanity run: one update a step
