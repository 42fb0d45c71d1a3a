"""mindrl.models.flops against a hand count and against torch's FlopCounterMode on real HF forwards
(and backwards) of tiny Qwen2 (GQA) and DeepSeek-V3 (MLA + MoE) models."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mindrl.models.flops import FlopModel, causal_pairs, flop_model, rollout_flops, step_flops, training_forward_flops

QWEN_H256 = {"model_type": "qwen2", "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4,
             "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 151936}
TINY_QWEN = {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4, "num_key_value_heads": 2,
             "num_hidden_layers": 2, "vocab_size": 300}
TINY_DSV3 = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
             "num_key_value_heads": 4, "vocab_size": 300, "q_lora_rank": 24, "kv_lora_rank": 16,
             "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8, "n_routed_experts": 4,
             "num_experts_per_tok": 2, "moe_intermediate_size": 32, "n_shared_experts": 1,
             "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1}


def test_hand_count_qwen2_h256():
    fm = flop_model(QWEN_H256)
    # per layer: q 256x256, k and v 256x(2 heads x 64) each, o 256x256; MLP gate, up, down 256x1024 each
    per_layer = 256 * 256 + 2 * 256 * 128 + 256 * 256 + 3 * 256 * 1024
    assert per_layer == 983_040
    assert fm.linear == 2 * 4 * per_layer == 7_864_320
    assert fm.head == 2 * 256 * 151_936 == 77_791_232  # the 2 x 256 x 151,936 per sampled token
    assert fm.attention_pair == 4 * (2 * 4 * 64 + 2 * 4 * 64)  # QK^T and PV, 4 heads x 64 dims, 4 layers


def test_causal_pairs():
    assert causal_pairs(0, 4) == 1 + 2 + 3 + 4
    assert causal_pairs(5, 3) == 6 + 7 + 8


def test_phases_by_hand():
    fm = FlopModel(linear=10, attention_pair=1, head=100)
    # one prompt of 3 tokens, two samples of 2 and 1 tokens
    # rollout: prefill 3 tokens (6 pairs) + 1 head; sample 1: one more token at position 3 (4 pairs) + 1 head
    assert rollout_flops(fm, [3], [[2, 1]]) == (30 + 6 + 100) + (10 + 4 + 100)
    # training forward of rows (3 + 2) and (3 + 1): 4 and 3 input positions, logits at 2 and 1
    fwd = (40 + 10 + 200) + (30 + 6 + 100)
    assert training_forward_flops(fm, [3, 3], [2, 1]) == fwd
    parts = step_flops(fm, [3], [[2, 1]], reference=True, old_log_probs=False, epochs=2)
    assert parts == {"rollout": 250, "reference": fwd, "old_log_probs": 0, "update": 6 * fwd,
                     "total": 250 + 7 * fwd}
    assert step_flops(fm, [3, 5], [[2, 1], [4]], trained=[0], reference=False)["update"] == 3 * fwd


def _counted(model: torch.nn.Module, tokens: torch.Tensor, backward: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        out = model(tokens).logits
        if backward:
            out.sum().backward()
    counts = counter.get_flop_counts()
    total = sum(counts["Global"].values())
    # the rotary tables' outer product (inv_freq @ positions) is not a model matmul
    rotary = sum(sum(v.values()) for k, v in counts.items() if k.endswith("rotary_emb"))
    return total - rotary


@pytest.mark.parametrize("arch", ["qwen2", "deepseek_v3"])
def test_matches_flop_counter_on_hf_models(arch):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if arch == "qwen2":
        hf, model = TINY_QWEN, Qwen2ForCausalLM._from_config(Qwen2Config(**TINY_QWEN), attn_implementation="eager")
    else:
        # eager experts: each routed token through its experts' matmuls (the counter cannot see grouped_mm)
        hf, model = TINY_DSV3, DeepseekV3ForCausalLM._from_config(
            DeepseekV3Config(**TINY_DSV3), attn_implementation="eager", experts_implementation="eager")
    b, s = 2, 7
    tokens = torch.randint(0, 300, (b, s))
    fm = flop_model(hf)
    # eager attention computes every (query, key) pair, masked ones included: b x s x s
    expected = fm.forward(b * s, b * s * s, b * s)
    assert _counted(model, tokens, backward=False) == expected
    assert _counted(model, tokens, backward=True) == 3 * expected  # backward = 2 x forward


def test_unknown_config_is_refused():
    with pytest.raises(ValueError, match="intermediate_size"):
        flop_model({"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10})
