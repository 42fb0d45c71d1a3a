"""Config loading (Hydra + typed dataclasses) and validation: each bad case gets its one line."""
from __future__ import annotations

import copy

import pytest

from mindrl.config import ConfigError, MindRLConfig, check_config, config_from_dict, load_config, validate
from mindrl.config.loader import REPO_CONFIGS

TINY_MOE = {"name": "tiny_moe", "hf_config": {
    "model_type": "deepseek_v3", "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
    "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 1000, "n_routed_experts": 6,
    "num_experts_per_tok": 2, "moe_intermediate_size": 32, "kv_lora_rank": 16, "q_lora_rank": 32,
    "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8}}


def base(**changes) -> dict:
    cfg = {
        "backend": "cpu",
        "model": copy.deepcopy(TINY_MOE),
        "megatron_training": {"global_batch_size": 4},
        "actor_config": {"micro_batch_size": 1},
        "rl_config": {"n_samples_per_prompt": 4, "actor_resource": {"num_npus": 2}},
    }
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def errors_of(**changes) -> list[str]:
    return validate(config_from_dict(base(**changes)))


def test_good_config_has_no_errors():
    assert errors_of() == []


@pytest.mark.parametrize("changes,message", [
    ({"actor_config__tensor_model_parallel_size": 3, "rl_config__actor_resource__num_npus": 3},
     "tensor_model_parallel_size=3 does not divide num_attention_heads=4"),
    ({"model__hf_config__num_key_value_heads": 2, "actor_config__tensor_model_parallel_size": 4,
      "rl_config__actor_resource__num_npus": 4}, "tensor_model_parallel_size=4 does not divide num_key_value_heads=2"),
    ({"actor_config__expert_model_parallel_size": 4, "rl_config__actor_resource__num_npus": 4},
     "expert_model_parallel_size=4 does not divide num_experts=6"),
    ({"actor_config__pipeline_model_parallel_size": 3, "rl_config__actor_resource__num_npus": 3},
     "pipeline_model_parallel_size=3 does not divide num_layers=4"),
    ({"actor_config__pipeline_model_parallel_size": 2, "actor_config__num_layer_list": [1, 2]},
     "num_layer_list [1, 2] sums to 3, but the model has 4 layers"),
    ({"megatron_training__global_batch_size": 3, "rl_config__n_samples_per_prompt": 3,
      "actor_config__micro_batch_size": 2}, "is not divisible by micro_batch_size x data-parallel size = 2 x 2"),
    ({"rl_config__n_samples_per_prompt": 1}, "n_samples_per_prompt=1: GRPO compares samples within a group"),
    ({"megatron_training__tokenizer_name_or_path": "/no/such/tokenizer"},
     "megatron_training.tokenizer_name_or_path: path '/no/such/tokenizer' does not exist"),
    ({"megatron_training__data_path": "/no/such/data_prefix"},
     "megatron_training.data_path: path '/no/such/data_prefix' does not exist"),
    ({"model__mtp_num_layers": 1}, "multi-token prediction is not supported yet"),
    ({"backend": "tpu"}, "backend: unknown value 'tpu'"),
    ({"backend": "cuda", "actor_config__compiled_logprob_tiles": True},
     "actor_config.compiled_logprob_tiles=true is verified on the cpu backend only (this job's backend is cuda"),
    ({"megatron_training__seq_length": 2047},
     "max_tokens = 2048 exceeds megatron_training.seq_length=2047 (the longest sequence the actor trains on)"),
])
def test_each_bad_case_has_its_message(changes, message):
    errors = errors_of(**changes)
    assert any(message in e for e in errors), errors


def test_unknown_keys_suggest_the_right_one():
    with pytest.raises(ConfigError) as err:
        config_from_dict(base(rl_config__n_sample_per_prompt=8, actor_config__tensor_parallel_size=2))
    text = str(err.value)
    assert "rl_config.n_sample_per_prompt: unknown key (did you mean 'n_samples_per_prompt'?)" in text
    assert "actor_config.tensor_parallel_size: unknown key (did you mean 'tensor_model_parallel_size'?)" in text


def test_wrong_types_are_named():
    with pytest.raises(ConfigError, match=r"rl_config.kl_coef: expected a number, got 'high'"):
        config_from_dict(base(rl_config__kl_coef="high"))


def test_check_config_raises_with_every_line():
    cfg = config_from_dict(base(rl_config__n_samples_per_prompt=1, backend="tpu"))
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert str(err.value).count("\n") >= 2


def test_hydra_composes_recipe_with_model_group_and_overrides():
    cfg = load_config("grpo_tiny_cpu", ["actor_config.tensor_model_parallel_size=1", "rl_config.kl_coef=0.01"])
    assert isinstance(cfg, MindRLConfig)
    assert cfg.model.name == "tiny_qwen2" and cfg.model.hf_config["model_type"] == "qwen2"
    assert cfg.actor_config.tensor_model_parallel_size == 1 and cfg.rl_config.kl_coef == 0.01
    assert validate(cfg, check_paths=False) == []
    # The demo's files do not exist until examples/grpo/grpo_trainer_tiny.sh prepares them.
    assert any("megatron_training.data_path: path 'output/tiny/data/tiny' does not exist" in e for e in validate(cfg)) \
        or (REPO_CONFIGS.parent / "output" / "tiny" / "data").exists()


def test_any_schema_key_can_be_overridden_even_if_the_recipe_omits_it():
    cfg = load_config("grpo_tiny_cpu", ["actor_config.pipeline_model_parallel_size=2", "model=tiny_llama"])
    assert cfg.actor_config.pipeline_model_parallel_size == 2 and cfg.model.name == "tiny_llama"
    with pytest.raises(ConfigError, match="did you mean 'pipeline_model_parallel_size'"):
        load_config("grpo_tiny_cpu", ["actor_config.pipline_model_parallel_size=2"])


def test_a_mindspeed_key_mindrl_does_not_have_says_where_its_job_is_done():
    with pytest.raises(ConfigError, match=r"megatron_training.dataset_additional_keys: not a mindrl key; label keys "
                                          r"are chosen at preprocessing"):
        config_from_dict(base(megatron_training__dataset_additional_keys=["labels"]))


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match="did you mean 'grpo_tiny_cpu'"):
        load_config("grpo_tiny_cpus")


def test_every_model_config_builds_a_plan():
    """Each configs/model/*.yaml maps to megatron-core (config only: no weights are allocated)."""
    from mindrl.config import resolve_hf_config
    from mindrl.models import ParallelLayout, plan_model

    names = sorted(p.stem for p in (REPO_CONFIGS / "model").glob("*.yaml"))
    assert {"qwen25_0.5b", "qwen25_3b", "qwen25_7b", "qwen25_32b", "llama32_1b", "deepseekv3_671b"} <= set(names)
    for name in names:
        cfg = load_config("grpo_tiny_cpu", [f"model={name}", "model.scale_down={}"])
        plan = plan_model(resolve_hf_config(cfg), ParallelLayout())
        assert plan.config.num_layers == cfg.model.scale_down.get("num_layers", cfg.model.hf_config["num_hidden_layers"])
