"""API-contract tests of the vLLM / vllm-ascend adapter against a RECORDING STAND-IN for vllm.LLM
(tests/rollout/vllm_standin.py). These are not verification of vLLM: vllm is not installed on
these machines. They check that the trainer's path (build_rollout -> RolloutRunner ->
VllmRolloutEngine) constructs vllm.LLM as the issue specifies, calls it in the sleep-mode order
(wake weights -> load_weights -> wake KV cache -> generate -> reset_prefix_cache -> sleep(1)),
pushes every parameter exactly once per step, and only under names vLLM's own load_weights
accepts for Qwen2, Llama and DeepSeek-V3 (rules transcribed from vLLM's model code).
"""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, shared_path
from tests.rollout.vllm_standin import accepted, expected_hf_names, vllm_params

WORKER = REPO / "tests" / "rollout" / "vllm_contract_worker.py"
ARCHS = ["qwen2", "llama", "deepseek_v3"]
pytestmark = pytest.mark.megatron


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict[str, dict]:
    shared_path("models")
    out = tmp_path_factory.mktemp("vllm")
    r = subprocess.run([sys.executable, str(WORKER), "--out", str(out)], capture_output=True, text=True, timeout=600,
                       cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-5000:]
    return {a: torch.load(out / f"{a}.pt", weights_only=False) for a in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_construction_arguments(records, arch):
    kw = records[arch]["record"]["init_kwargs"]
    assert not records[arch]["shared"]
    want = {"distributed_executor_backend": "external_launcher", "tensor_parallel_size": 1, "enable_sleep_mode": True,
            "load_format": "dummy", "logprobs_mode": "processed_logprobs", "seed": 1234, "max_model_len": 512,
            "max_num_seqs": 64, "gpu_memory_utilization": 0.5}
    assert {k: kw.get(k) for k in want} == want
    assert (Path(kw["model"]) / "config.json").is_file()  # the HF config; the weights come from the actor


@pytest.mark.parametrize("arch", ARCHS)
def test_call_order(records, arch):
    rec = records[arch]["record"]
    assert rec["violations"] == []
    calls = [c for c in rec["calls"] if c[0] != "load_weights"]
    loads = [i for i, c in enumerate(rec["calls"]) if c[0] == "load_weights"]
    assert calls[:3] == [("LLM",), ("reset_prefix_cache",), ("sleep", 1)]  # asleep until the first step
    step = [("wake_up", ("weights",)), ("wake_up", ("kv_cache",)), ("generate", 2), ("reset_prefix_cache",),
            ("sleep", 1)]
    assert calls[3:] == step * 3
    # Every load_weights lies between a weights wake-up and the KV-cache wake-up of the same step.
    for i in loads:
        before = [c for c in rec["calls"][:i] if c[0] in ("wake_up", "sleep")]
        assert before[-1] == ("wake_up", ("weights",))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_parameter_pushed_exactly_once_per_step(records, arch):
    rec, hf = records[arch]["record"], records[arch]["hf"]
    want = expected_hf_names(hf)
    assert len(rec["pushed"]) == 3
    for step in rec["pushed"][:2]:  # the first step and the step after weights_updated()
        assert set(step) == want, (sorted(set(step) - want)[:4], sorted(want - set(step))[:4])
        assert set(Counter(step).values()) == {1}
    assert not rec["pushed"][2], "pushed without an update"


@pytest.mark.parametrize("arch", ARCHS)
def test_names_accepted_by_vllm_and_shapes_are_hf(records, arch, tmp_path):
    """Accepted by vLLM's rules, and each tensor has the shape HF transformers saves under that name."""
    from tests.checkpoint.test_convert import load_st
    from tests.checkpoint.tiny import make_hf_model

    rec = records[arch]["record"]
    assert rec["rejected"] == []
    saved = {k: tuple(v.shape) for k, v in load_st(make_hf_model(shared_path("models"), arch, tmp_path)).items()}
    assert set(rec["shapes"]) == set(saved)
    for name, shape in rec["shapes"].items():
        assert saved[name] == shape, name


def test_accepted_name_rules_reject_wrong_names():
    """The rules are not vacuous: megatron names, HF names vLLM renames wrongly, unknown layers fail."""
    qwen = {"model_type": "qwen2", "num_hidden_layers": 2, "tie_word_embeddings": True}
    assert accepted(qwen, "model.layers.1.self_attn.q_proj.weight")
    assert accepted(qwen, "model.layers.0.mlp.up_proj.weight")
    assert not accepted(qwen, "decoder.layers.0.self_attention.linear_qkv.weight")
    assert not accepted(qwen, "model.layers.2.self_attn.q_proj.weight")
    assert not accepted(qwen, "lm_head.weight") and "lm_head.weight" not in vllm_params(qwen)
    llama = {**qwen, "model_type": "llama"}
    assert not accepted(llama, "model.layers.0.self_attn.q_proj.bias")
    ds = {"model_type": "deepseek_v3", "num_hidden_layers": 2, "first_k_dense_replace": 1, "q_lora_rank": 8,
          "n_routed_experts": 4, "n_shared_experts": 1}
    assert accepted(ds, "model.layers.1.mlp.experts.3.down_proj.weight")
    assert accepted(ds, "model.layers.1.self_attn.kv_a_proj_with_mqa.weight")
    assert not accepted(ds, "model.layers.0.mlp.experts.0.gate_proj.weight")  # layer 0 is dense
    assert not accepted(ds, "model.layers.1.self_attn.q_proj.weight")  # q_lora_rank set: q_a / q_b
