"""HF config -> megatron-core mapping per architecture (no processes; config objects only)."""
from __future__ import annotations

import pytest
import torch.nn.functional as F

from mindrl.models import ParallelLayout, load_hf_config, padded_vocab_size, plan_model, scale_down
from mindrl.models.builder import megatron_args
from tests.conftest import shared_path


def real(name: str) -> dict:
    return load_hf_config(shared_path("models", name))


def test_qwen25_05b_mapping():
    args = megatron_args(real("Qwen2.5-0.5B"))
    c = args.config
    assert (c["num_layers"], c["hidden_size"], c["ffn_hidden_size"]) == (24, 896, 4864)
    assert (c["num_attention_heads"], c["num_query_groups"], c["kv_channels"]) == (14, 2, 64)
    assert c["add_qkv_bias"] is True and c["add_bias_linear"] is False
    assert c["gated_linear_unit"] is True and c["activation_func"] is F.silu
    assert c["layernorm_epsilon"] == 1e-6
    assert args.model["rotary_base"] == 1000000.0 and args.model["share_embeddings_and_output_weights"] is True
    assert args.vocab_size == 151936


def test_transformers5_rope_parameters_are_read():
    """Qwen2.5-1.5B-Instruct was re-saved by transformers 5 (`rope_parameters`)."""
    args = megatron_args(real("Qwen2.5-1.5B-Instruct"))
    assert args.model["rotary_base"] == 1000000.0


def test_qwen25_7b_is_untied():
    assert megatron_args(real("Qwen2.5-7B")).model["share_embeddings_and_output_weights"] is False


def test_llama32_rope_scaling():
    args = megatron_args(real("Llama-3.2-1B"))
    assert args.model["rope_scaling"] is True and args.model["rope_scaling_factor"] == 32.0
    assert args.model["rotary_base"] == 500000.0 and args.config["kv_channels"] == 64
    bad = real("Llama-3.2-1B")
    bad["rope_scaling"]["high_freq_factor"] = 8.0
    with pytest.raises(ValueError, match="high_freq_factor=8.0 but megatron-core fixes it at 4.0"):
        megatron_args(bad)


def test_deepseek_v3_mapping():
    args = megatron_args(real("DeepSeek-V3"))
    c = args.config
    assert args.mla and args.num_experts == 256
    assert (c["q_lora_rank"], c["kv_lora_rank"], c["qk_head_dim"], c["qk_pos_emb_head_dim"], c["v_head_dim"]) == \
        (1536, 512, 128, 64, 128)
    assert c["moe_layer_freq"] == [0, 0, 0] + [1] * 58  # first_k_dense_replace = 3
    assert c["moe_router_score_function"] == "sigmoid" and c["moe_router_enable_expert_bias"] is True
    assert (c["moe_router_num_groups"], c["moe_router_group_topk"], c["moe_router_topk"]) == (8, 4, 8)
    assert c["moe_router_topk_scaling_factor"] == 2.5
    assert c["moe_shared_expert_intermediate_size"] == 2048 and c["moe_ffn_hidden_size"] == 2048
    assert c["rope_type"] == "yarn" and c["rotary_scaling_factor"] == 40.0
    assert c["original_max_position_embeddings"] == 4096 and c["mscale_all_dim"] == 1.0
    assert any("MTP" in n for n in args.notes)


def test_asking_for_mtp_fails_clearly():
    with pytest.raises(NotImplementedError, match="multi-token prediction"):
        megatron_args(real("DeepSeek-V3"), mtp_num_layers=1)
    with pytest.raises(NotImplementedError, match="multi-token prediction"):
        megatron_args(real("Qwen2.5-0.5B"), mtp_num_layers=1)


def test_unknown_architecture_suggests():
    with pytest.raises(ValueError, match=r"model_type 'qwen3' is not supported \(did you mean 'qwen2'\?\)"):
        megatron_args({"model_type": "qwen3"})


def test_missing_field_is_named():
    hf = real("Qwen2.5-0.5B")
    del hf["hidden_size"]
    with pytest.raises(KeyError, match="missing required field 'hidden_size'"):
        megatron_args(hf)


@pytest.mark.parametrize("vocab,tp,div,want", [(151936, 1, 128, 151936), (151936, 2, 128, 152064),
                                               (129280, 8, 128, 130048), (100, 3, 1, 102)])
def test_padded_vocab(vocab, tp, div, want):
    assert padded_vocab_size(vocab, tp, div) == want


def test_scale_down_keeps_quirks():
    tiny = scale_down(real("DeepSeek-V3"), num_layers=3)
    assert tiny["vocab_size"] == 129280 and tiny["rope_scaling"]["type"] == "yarn"
    assert tiny["first_k_dense_replace"] == 1 and tiny["n_shared_experts"] == 1 and "quantization_config" not in tiny
    q = scale_down(real("Qwen2.5-0.5B"), num_heads=4, num_kv_heads=2)
    assert q["tie_word_embeddings"] is True and q["rope_theta"] == 1000000.0


def test_plan_turns_on_sequence_parallel_for_moe_with_tp():
    plan = plan_model(scale_down(real("DeepSeek-V3"), num_layers=2), ParallelLayout(tp=2))
    assert plan.config.sequence_parallel is True
    plan = plan_model(scale_down(real("Qwen2.5-0.5B"), num_heads=4, num_kv_heads=2), ParallelLayout(tp=2))
    assert plan.config.sequence_parallel is False


def test_uneven_pipeline_layout():
    layout = ParallelLayout(pp=3, num_layer_list=[1, 3, 2])
    assert layout.pipeline_layout(6) == [["embedding", "decoder"], ["decoder"] * 3, ["decoder", "decoder", "loss"]]
    plan = plan_model(scale_down(real("Qwen2.5-0.5B"), num_layers=6, num_heads=4, num_kv_heads=2), layout)
    assert plan.config.pipeline_model_parallel_layout is not None


def test_layout_errors_are_one_line_each():
    errors = ParallelLayout(tp=3, pp=2, ep=4, num_layer_list=[2, 2]).check(
        num_layers=5, num_heads=8, num_kv_heads=2, num_experts=6, world_size=12)
    assert errors == [
        "tensor_model_parallel_size=3 does not divide num_attention_heads=8",
        "expert_model_parallel_size=4 does not divide num_experts=6",
        "num_layer_list [2, 2] sums to 4, but the model has 5 layers",
        "expert_model_parallel_size=4 x tensor_model_parallel_size=3 (expert tensor parallelism is TP) "
        "does not divide world size / PP = 6",
    ]
    # megatron-core needs world % (expert-TP x EP x PP) == 0 with expert-TP = TP: TP2 EP2 on 2 ranks is
    # refused at its startup ("world_size (2) is not divisible by ... (4)"), so validate() refuses it first
    assert ParallelLayout(tp=2, ep=2).check(num_layers=2, num_heads=4, num_kv_heads=2, num_experts=4,
                                            world_size=2) == [
        "expert_model_parallel_size=2 x tensor_model_parallel_size=2 (expert tensor parallelism is TP) "
        "does not divide world size / PP = 2"]
    assert ParallelLayout(tp=2, ep=2).check(num_layers=2, num_heads=4, num_kv_heads=2, num_experts=4,
                                            world_size=4) == []
    assert ParallelLayout(tp=4, pp=8, ep=8).check(num_layers=64, num_heads=128, num_kv_heads=128,
                                                  num_experts=256, world_size=384) != []
    # the rollout layout's keys, through the same checker (validate() passes them)
    assert ParallelLayout(tp=4, ep=4).check(num_layers=2, num_heads=8, num_kv_heads=2, num_experts=6,
                                            keys={"tp": "infer_tp", "pp": "infer_pp", "ep": "infer_ep"}) == [
        "infer_tp=4 does not divide num_key_value_heads=2 (each TP rank needs whole KV groups)",
        "infer_ep=4 does not divide num_experts=6"]


def test_an_architecture_is_one_record_and_one_registry_line(monkeypatch):
    """Registering one `Architecture` is all the planner, the checkpoint mapping and the rank-file
    planner need: a made-up GQA model type without QKV bias goes through all three."""
    from mindrl.checkpoint.hf_mapping import Mapping
    from mindrl.models.layout import plan_ranks
    from mindrl.models import ARCHITECTURES, Architecture
    from mindrl.models.arch import COMMON_SPLITS, GQA_SPLITS, gqa_rules
    from mindrl.models.llama import to_megatron

    toy = Architecture("toy_gqa", lambda hf, mtp_num_layers=0: to_megatron(hf, mtp_num_layers),
                       lambda hf: gqa_rules(hf, qkv_bias=False), splits=GQA_SPLITS + COMMON_SPLITS)
    monkeypatch.setitem(ARCHITECTURES, "toy_gqa", toy)
    hf = dict(scale_down(real("Llama-3.2-1B"), num_layers=2, num_heads=4, num_kv_heads=2), model_type="toy_gqa")
    plan = plan_model(hf, ParallelLayout(tp=2))
    m = Mapping(hf)
    # embedding; per layer: 2 norms, qkv, proj, fc1, fc2; final norm; lm_head unless tied
    assert m.arch is toy and len(m.rules) == 1 + 2 * 6 + 1 + (0 if hf.get("tie_word_embeddings") else 1)
    assert not any(r.canonical.endswith("linear_qkv.bias") for r in m.rules)
    ranks = plan_ranks(m, plan.layout, plan.padded_vocab_size)
    qkv = [t for r in ranks for _, t in r.tensors() if t.name == "decoder.layers.0.self_attention.linear_qkv.weight"]
    assert [t.spec.split_dim for t in qkv] == [0, 0] and qkv[0].shape[0] * 2 == m.by_canonical[qkv[0].name].shape[0]
