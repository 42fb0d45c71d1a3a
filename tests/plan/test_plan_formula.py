"""Planned weights + grads + main params + optimizer of the most loaded rank vs Megatron-LM's formula.

Reference: `compute_weight_and_optimizer_memory` of Megatron-LM's megatron/training/theoretical_memory_usage.py
(NVIDIA/Megatron-LM at d98e8a64ddf34856e74b24714e3bedb2f5a39553, lines 12-300), transcribed below for
dense GQA models (its MoE / MLA / MTP branches dropped). The model is the real Qwen2.5-7B, planned at
full size (meta-free fake tensors, so nothing is allocated). Within 1%; what remains is what the
formula leaves out: Qwen2's q/k/v biases (4.6k parameters per layer) and the distributed optimizer's
bucket padding.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def megatron_lm_weight_and_optimizer_memory(hf: dict, *, tp: int, pp: int, dp: int, padded_vocab: int,
                                            use_distributed_optimizer: bool) -> float:
    """theoretical_memory_usage.py:12 compute_weight_and_optimizer_memory, dense GQA branch, verbatim arithmetic."""
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    kv_channels = hidden // heads
    num_query_groups = hf["num_key_value_heads"]
    query_projection_size = kv_channels * heads  # line 14
    query_projection_to_hidden_size_ratio = query_projection_size / hidden  # line 15
    gated_linear_multiplier = 3 / 2  # line 21: swiglu
    num_layers = hf["num_hidden_layers"]
    num_dense_layers = num_layers  # lines 46-49
    norm_size = 1  # line 60: RMSNorm
    self_attn_term = 2 * hidden * hidden * ((1 + (num_query_groups / heads)) * query_projection_to_hidden_size_ratio)
    embedding_size = hidden * padded_vocab  # line 95
    final_layernorm = norm_size * hidden  # line 96
    attention_params = self_attn_term  # line 102
    dense_mlp_params = 2 * hidden * hf["intermediate_size"] * gated_linear_multiplier  # line 103
    layernorm_params = 2 * hidden * norm_size  # line 127
    tp_sharded = (attention_params + dense_mlp_params) * num_dense_layers  # line 213
    replicated = layernorm_params * num_dense_layers + final_layernorm  # line 217
    tp_on_most_loaded = (tp_sharded / pp + embedding_size) / tp  # line 249
    replicated_on_most_loaded = replicated / pp  # line 254
    untie = not hf.get("tie_word_embeddings", False)
    if untie and pp == 1:  # line 265
        tp_on_most_loaded += embedding_size / tp
    bytes_per_parameter = 18 if not use_distributed_optimizer else 6 + (12 / dp)  # line 291
    return (tp_on_most_loaded + replicated_on_most_loaded) * bytes_per_parameter  # line 295


@pytest.mark.parametrize("tp,pp,dp,dist_opt", [(4, 1, 2, False), (2, 2, 2, True)])
def test_planned_state_bytes_match_megatron_lm_formula(tp: int, pp: int, dp: int, dist_opt: bool) -> None:
    hf = yaml.safe_load((ROOT / "configs/model/qwen25_7b.yaml").read_text())["hf_config"]
    overrides = [f"actor_config.tensor_model_parallel_size={tp}", f"actor_config.pipeline_model_parallel_size={pp}",
                 f"rl_config.actor_resource.num_npus={tp * pp * dp}", "megatron_training.bf16=true",
                 f"megatron_training.use_distributed_optimizer={str(dist_opt).lower()}", "backend=cuda"]
    proc = subprocess.run([sys.executable, "-m", "mindrl.plan", "--config-name", "grpo_qwen25_7b_deepscaler",
                           "--states-only", "--json", *overrides], capture_output=True, text=True, cwd=ROOT,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage0 = json.loads(proc.stdout)["stages"][0]  # the embedding's stage: Megatron-LM's "most loaded shard"
    planned = stage0["weights"] + stage0["grads"] + stage0["main_params"] + stage0["optimizer"]
    multiple = 128 * tp
    padded_vocab = -(-hf["vocab_size"] // multiple) * multiple
    formula = megatron_lm_weight_and_optimizer_memory(hf, tp=tp, pp=pp, dp=dp, padded_vocab=padded_vocab,
                                                      use_distributed_optimizer=dist_opt)
    assert abs(planned - formula) <= 0.01 * formula, f"planned {planned} vs Megatron-LM {formula:.0f}"
