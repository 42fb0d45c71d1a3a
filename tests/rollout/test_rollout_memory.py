"""The 671B recipe's rollout layout fits a 64 GB die (mindrl/rollout/memory.py, docs/rollout.md).

The parameter counts are checked against HF transformers' DeepseekV3ForCausalLM built on the meta
device from the recipe's own config (671,026,419,200 tensors' elements, by part); the old layout's
expert bytes against the issue's hand computation (32 experts x 58 layers x 3 x 7168 x 2048 x 2 B).
"""
from __future__ import annotations

import pytest

from mindrl.config import load_config
from mindrl.rollout.memory import deepseek_v3_param_counts, mla_kv_bytes_per_token, rollout_bytes_per_rank

DIE_BYTES = 64e9  # Ascend 910B / A3 die (64 GB HBM); GB, not GiB: the smaller, so the stricter
GB = 1e9


@pytest.fixture(scope="module")
def recipe():
    return load_config("grpo_deepseek_r1_671b")


def hf_of(cfg) -> dict:
    return dict(cfg.model.hf_config) if hasattr(cfg.model, "hf_config") else dict(cfg.model["hf_config"])


def test_param_counts_equal_transformers_deepseek_v3(recipe):
    import torch
    import transformers

    hf = hf_of(recipe)
    config = transformers.AutoConfig.for_model("deepseek_v3", **{k: v for k, v in hf.items() if k != "model_type"})
    with torch.device("meta"):
        model = transformers.DeepseekV3ForCausalLM(config)
    parts = {"vocab": 0, "attn": 0, "dense": 0, "shared": 0, "router": 0, "experts": 0}
    for name, t in model.state_dict().items():
        if ".mlp.experts." in name:
            parts["experts"] += t.numel()
        elif ".shared_experts." in name:
            parts["shared"] += t.numel()
        elif ".mlp.gate." in name:
            parts["router"] += t.numel()
        elif ".mlp." in name:
            parts["dense"] += t.numel()
        elif ".layers." in name:  # attention projections and the layers' norms
            parts["attn"] += t.numel()
        else:  # embedding, final norm, LM head
            parts["vocab"] += t.numel()
    ours = deepseek_v3_param_counts(hf)
    assert ours["attn_split"] + ours["attn_whole"] == parts["attn"]
    assert {k: ours[k] for k in ("vocab", "dense", "shared", "router", "experts")} == \
        {k: parts[k] for k in ("vocab", "dense", "shared", "router", "experts")}
    assert sum(ours.values()) == sum(parts.values()) == 671_026_419_200


def test_old_layout_did_not_fit_and_the_recipe_layout_does(recipe):
    hf = hf_of(recipe)
    old = rollout_bytes_per_rank(hf, tp=4, ep=8)
    assert old["routed_experts"] == 32 * 58 * 3 * 7168 * 2048 * 2  # 163.5 GB: the review's figure
    assert old["total"] > DIE_BYTES

    g = recipe.generate_config
    assert g.engine == "vllm" and g.offload_train_state
    world = recipe.rl_config.actor_resource.num_npus
    new = rollout_bytes_per_rank(hf, tp=g.infer_tensor_parallel_size, ep=g.infer_expert_parallel_size)
    # The training weights and the reference model stay on the die while vLLM is awake (the optimizer
    # state goes to the host): bf16, 1/world of the model each (training TP x PP x EP = world).
    resident = 2 * sum(deepseek_v3_param_counts(hf).values()) * 2 / world
    vllm_budget = g.gpu_memory_utilization * DIE_BYTES
    assert resident + vllm_budget <= DIE_BYTES - 2 * GB, "no room left for the runtime and collectives' buffers"
    kv = vllm_budget - new["total"] - 3 * GB  # 3 GB: activations / sampler workspace (not measured)
    assert new["total"] < 32 * GB and kv >= 12 * GB, (new["total"] / GB, kv / GB)
    # At least ~55 full-length sequences (prompt + response = max_model_len) of KV per TP group.
    assert kv / (mla_kv_bytes_per_token(hf) * g.max_model_len) >= 55
