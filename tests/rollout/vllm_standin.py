"""A recording stand-in for `vllm.LLM` / `vllm.SamplingParams`, for API-contract tests only.

It is NOT vLLM and verifies nothing about vLLM itself. It records what the adapter asks of vLLM
and checks it against vLLM's documented contract:
- sleep mode: no `load_weights` while the weights sleep; the KV cache is woken after the weights;
  `generate` only with both awake; `sleep(level=1)` only (vllm-ascend supports level 1 only);
- every parameter pushed exactly once per step;
- names vLLM's `load_weights` accepts, by the rules of vLLM's model code (VLLM_RULES below).

VLLM_RULES is test data transcribed from vLLM's `load_weights` (vllm/model_executor/models/
qwen2.py, llama.py: `stacked_params_mapping` q/k/v_proj -> qkv_proj, gate/up_proj -> gate_up_proj,
`rotary_emb.inv_freq` skipped, lm_head skipped when tied; deepseek_v2.py (DeepseekV3ForCausalLM):
gate/up_proj -> gate_up_proj outside the routed experts, q_a_proj / kv_a_proj_with_mqa ->
fused_qkv_a_proj when q_lora_rank is set, routed experts through
`FusedMoE.make_expert_params_mapping(gate_proj, down_proj, up_proj)` -> experts.w13_weight /
experts.w2_weight). A name is accepted when, after those renames, it is a parameter of vLLM's
module tree for the config (`vllm_params`).
"""
from __future__ import annotations

import importlib.machinery
import re
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

VLLM_RULES: dict[str, dict[str, Any]] = {
    "qwen2": {"stacked": [("qkv_proj", "q_proj"), ("qkv_proj", "k_proj"), ("qkv_proj", "v_proj"),
                          ("gate_up_proj", "gate_proj"), ("gate_up_proj", "up_proj")],
              "skip": ["rotary_emb.inv_freq"]},
    "llama": {"stacked": [("qkv_proj", "q_proj"), ("qkv_proj", "k_proj"), ("qkv_proj", "v_proj"),
                          ("gate_up_proj", "gate_proj"), ("gate_up_proj", "up_proj")],
              "skip": ["rotary_emb.inv_freq"]},
    "deepseek_v3": {"stacked": [("gate_up_proj", "gate_proj"), ("gate_up_proj", "up_proj"),
                                ("fused_qkv_a_proj", "q_a_proj"), ("fused_qkv_a_proj", "kv_a_proj_with_mqa")],
                    "experts": [("experts.w13_", "gate_proj"), ("experts.w2_", "down_proj"),
                                ("experts.w13_", "up_proj")],
                    "skip": ["rotary_emb.inv_freq"]},
}


def vllm_params(cfg: dict[str, Any]) -> set[str]:
    """vLLM's parameter names (its module tree) for an HF config of qwen2 / llama / deepseek_v3."""
    t, n = cfg["model_type"], int(cfg["num_hidden_layers"])
    out = {"model.embed_tokens.weight", "model.norm.weight"}
    if not cfg.get("tie_word_embeddings", False):
        out.add("lm_head.weight")
    for i in range(n):
        p = f"model.layers.{i}."
        out |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight", p + "self_attn.o_proj.weight"}
        if t in ("qwen2", "llama"):
            out |= {p + "self_attn.qkv_proj.weight", p + "mlp.gate_up_proj.weight", p + "mlp.down_proj.weight"}
            if t == "qwen2" or cfg.get("attention_bias"):
                out.add(p + "self_attn.qkv_proj.bias")
            continue
        a = p + "self_attn."
        if cfg.get("q_lora_rank"):
            out |= {a + "fused_qkv_a_proj.weight", a + "q_a_layernorm.weight", a + "q_b_proj.weight"}
        else:
            out |= {a + "q_proj.weight", a + "kv_a_proj_with_mqa.weight"}
        out |= {a + "kv_a_layernorm.weight", a + "kv_b_proj.weight"}
        if i < int(cfg.get("first_k_dense_replace", 0)):
            out |= {p + "mlp.gate_up_proj.weight", p + "mlp.down_proj.weight"}
        else:
            out |= {p + "mlp.gate.weight", p + "mlp.experts.w13_weight", p + "mlp.experts.w2_weight"}
            if cfg.get("topk_method", "noaux_tc") == "noaux_tc":
                out.add(p + "mlp.gate.e_score_correction_bias")
            if cfg.get("n_shared_experts"):
                out |= {p + "mlp.shared_experts.gate_up_proj.weight", p + "mlp.shared_experts.down_proj.weight"}
    return out


def expected_hf_names(cfg: dict[str, Any]) -> set[str]:
    """The HF names a full push must carry: each vLLM parameter's checkpoint shards."""
    out = set()
    experts = int(cfg.get("n_routed_experts") or 0)
    for name in vllm_params(cfg):
        if name.endswith("qkv_proj.weight") or name.endswith("qkv_proj.bias"):
            out |= {name.replace("qkv_proj", x) for x in ("q_proj", "k_proj", "v_proj")}
        elif "fused_qkv_a_proj" in name:
            out |= {name.replace("fused_qkv_a_proj", x) for x in ("q_a_proj", "kv_a_proj_with_mqa")}
        elif "gate_up_proj" in name:
            out |= {name.replace("gate_up_proj", x) for x in ("gate_proj", "up_proj")}
        elif name.endswith("experts.w13_weight"):
            out |= {name.replace("w13_weight", f"{e}.{x}.weight") for e in range(experts) for x in ("gate_proj", "up_proj")}
        elif name.endswith("experts.w2_weight"):
            out |= {name.replace("w2_weight", f"{e}.down_proj.weight") for e in range(experts)}
        else:
            out.add(name)
    return out


def accepted(cfg: dict[str, Any], name: str) -> bool:
    """Would vLLM's load_weights for this config take `name` (VLLM_RULES + vllm_params)?"""
    rules = VLLM_RULES[cfg["model_type"]]
    if any(s in name for s in rules["skip"]):
        return True
    params = vllm_params(cfg)
    if "experts" in rules and re.search(r"\.mlp\.experts\.\d+\.", name):
        for param, weight in rules["experts"]:
            if f".{weight}." in name:
                return re.sub(r"experts\.\d+\.\w+\.", param, name) in params
        return False
    for param, weight in rules["stacked"]:
        if weight in name:
            return name.replace(weight, param) in params
    return name in params


@dataclass
class Record:
    calls: list[tuple] = field(default_factory=list)
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    pushed: list[Counter] = field(default_factory=list)  # per wake cycle: HF name -> times loaded
    rejected: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    shapes: dict[str, tuple] = field(default_factory=dict)


RECORD = Record()


class SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


class _Completion:
    def __init__(self, index: int, token_ids: list[int]) -> None:
        self.index, self.token_ids = index, token_ids
        self.logprobs = [{t: types.SimpleNamespace(logprob=-0.5)} for t in token_ids]
        self.finish_reason, self.stop_reason, self.text = "length", None, ""


class LLM:
    def __init__(self, model: str, **kwargs: Any) -> None:
        import json
        import os

        RECORD.init_kwargs = {"model": model, **kwargs}
        self.cfg = json.load(open(os.path.join(model, "config.json")))
        self.awake = {"weights", "kv_cache"}
        RECORD.calls.append(("LLM",))
        outer = self

        class _Model:
            def load_weights(self, weights: Any) -> set[str]:
                if "weights" not in outer.awake:
                    RECORD.violations.append("load_weights while the weights sleep")
                for name, t in weights:
                    RECORD.calls.append(("load_weights",))
                    if not accepted(outer.cfg, name):
                        RECORD.rejected.append(name)
                    RECORD.pushed[-1][name] += 1
                    RECORD.shapes[name] = tuple(t.shape)
                return {n for n, _ in weights}

        self.worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=_Model()))

    def collective_rpc(self, fn: Any) -> list[Any]:
        return [fn(self.worker)]

    def wake_up(self, tags: list[str] | None = None) -> None:
        tags = tags or ["weights", "kv_cache"]
        RECORD.calls.append(("wake_up", tuple(tags)))
        if "weights" in tags:
            RECORD.pushed.append(Counter())
        if "kv_cache" in tags and "weights" not in self.awake and "weights" not in tags:
            RECORD.violations.append("KV cache woken before the weights")
        self.awake |= set(tags)

    def sleep(self, level: int = 1) -> None:
        RECORD.calls.append(("sleep", level))
        if level != 1:
            RECORD.violations.append(f"sleep(level={level}): vllm-ascend supports level 1 only")
        self.awake.clear()

    def reset_prefix_cache(self) -> None:
        RECORD.calls.append(("reset_prefix_cache",))

    def generate(self, prompts: list[dict], sampling_params: Any = None, use_tqdm: bool = True) -> list[Any]:
        RECORD.calls.append(("generate", len(prompts)))
        if self.awake != {"weights", "kv_cache"}:
            RECORD.violations.append(f"generate while asleep ({sorted(self.awake)} awake)")
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        out = []
        for p, sp in zip(prompts, params):
            base = (sp.seed or 0) % 50
            out.append(types.SimpleNamespace(outputs=[_Completion(s, [base + s, base + s + 1])
                                                      for s in range(sp.n)]))
        return out


def install() -> types.ModuleType:
    """Put the stand-in in sys.modules as `vllm` (find_spec sees it through __spec__)."""
    import sys

    mod = types.ModuleType("vllm")
    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    mod.LLM, mod.SamplingParams, mod.RECORD = LLM, SamplingParams, RECORD
    sys.modules["vllm"] = mod
    return mod
