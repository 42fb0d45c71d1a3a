"""Every shipped recipe (configs/*.yaml, globbed: new recipes are covered on arrival) loads, and
validates with its paths checked, once those paths point at files that exist."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from mindrl.config import check_config, load_config, validate
from mindrl.config.loader import REPO_CONFIGS
from mindrl.workers.bringup import PolicySpec

RECIPES = sorted(p.stem for p in REPO_CONFIGS.glob("*.yaml"))


def path_fixtures(tmp: Path) -> list[str]:
    """Overrides pointing every path the recipe names at temporary stand-ins of the right kind:
    a tokenizer directory, a preprocessed-prompt prefix (validate accepts `<prefix>*` files),
    a megatron checkpoint directory. `validate` checks existence, not contents."""
    (tmp / "tokenizer").mkdir()
    (tmp / "data").mkdir()
    (tmp / "data" / "prompts_prompt_document.bin").write_bytes(b"")
    (tmp / "ckpt").mkdir()
    return [f"megatron_training.tokenizer_name_or_path={tmp / 'tokenizer'}",
            f"megatron_training.data_path={tmp / 'data' / 'prompts'}", f"actor_config.load={tmp / 'ckpt'}"]


def test_recipes_are_found():
    assert {"grpo_tiny_cpu", "grpo_qwen25_3b_countdown", "grpo_qwen25_7b_deepscaler",
            "grpo_deepseek_r1_671b"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_loads_and_validates(recipe, tmp_path):
    cfg = load_config(recipe)
    # As shipped, the paths are the user's to fill in: validate names each missing one.
    missing = [e for e in validate(cfg) if "does not exist" in e]
    assert all(e.split(":")[0] in ("megatron_training.tokenizer_name_or_path", "megatron_training.data_path",
                                   "actor_config.load") for e in missing), missing
    paths = path_fixtures(tmp_path)
    cfg = load_config(recipe, paths)
    if cfg.generate_config.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        # Where vLLM is not installed (every CPU machine here), the one refusal is the missing package...
        assert validate(cfg) == [e for e in validate(cfg) if "needs the 'vllm' package" in e] != []
        cfg = load_config(recipe, paths + ["generate_config.engine=builtin"])
    check_config(cfg, check_paths=True)  # ...and otherwise it is valid (raises ConfigError listing every problem)
    # The model and layout the recipe asks for plan on megatron-core (config only, no weights).
    from mindrl.models import plan_model

    spec = PolicySpec.from_config(cfg)
    plan = plan_model(spec.hf, spec.layout, dtype="bf16" if cfg.megatron_training.bf16 else "fp32",
                      make_vocab_size_divisible_by=spec.make_vocab_size_divisible_by, recompute=spec.recompute)
    assert plan.config.tensor_model_parallel_size == cfg.actor_config.tensor_model_parallel_size
    assert plan.config.pipeline_model_parallel_size == cfg.actor_config.pipeline_model_parallel_size
