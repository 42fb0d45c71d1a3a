"""`actor_config.use_torch_compile`: the compiled transformer layers against the eager ones (the plain
path is the reference), determinism, the resume case, and where validate() refuses the key.

Tolerance of compiled vs eager: inductor fuses the norms, RoPE, SwiGLU and residual adds into its own
kernels, so fp32 sums are reassociated: per-element differences of a few ulps that grow through 2 layers
and the log-softmax. 2e-5 absolute on log-probs of magnitude ~7 is ~20 ulps at that magnitude (measured:
2.9e-6 / 3.8e-6); 1e-5 relative to the largest gradient is ~80 ulps (measured: 2.2e-6 and 3.2e-6 relative).
A real defect (a dropped residual, a wrong mask, RoPE at wrong positions, a wrong scale) moves log-probs and
gradients by >= 1e-2, three orders above. Determinism and resume are bit-exact.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mindrl.config import config_from_dict, validate

WORKER = Path(__file__).with_name("compile_worker.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.megatron
def test_compiled_layers_equal_the_eager_path(tmp_path):
    proc = subprocess.run([sys.executable, str(WORKER), "--out", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = torch.load(tmp_path / "result.pt", weights_only=False)
    for name in ("fixed", "packed", "reference"):
        assert r[f"{name}_logp_mean"] < -1.0  # real log-probs, not zeros
        assert r[f"{name}_logp"] <= 2e-5, (name, r[f"{name}_logp"])
        assert r[f"{name}_logp_off_response"] == 0.0
        assert r[f"{name}_logp_deterministic"] and r[f"{name}_eager_after"], name
    for name in ("fixed", "packed"):
        assert r[f"{name}_grad_scale"] > 1e-2
        assert r[f"{name}_grad"] <= 1e-5 * r[f"{name}_grad_scale"], (name, r[f"{name}_grad"])
        values = r[f"{name}_metric_values"]
        assert values["actor/update_ok"] == 1.0 and values["actor/pg_clipfrac"] > 0  # clipping was active
        for key, diff in r[f"{name}_metrics"].items():
            assert diff <= 1e-5 * max(1.0, abs(values[key])), (name, key, diff)
        assert r[f"{name}_update_deterministic"], name
    assert r["resume_logp_equal"] and r["resume_update_equal"]


def _cfg(**actor) -> dict:
    return {"backend": "cpu", "model": {"name": "tiny", "hf_config": {
        "model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000}},
        "megatron_training": {"global_batch_size": 4}, "actor_config": {"micro_batch_size": 1, **actor},
        "rl_config": {"n_samples_per_prompt": 4, "actor_resource": {"num_npus": 2}}}


def _compile_errors(cfg: dict) -> list[str]:
    return [e for e in validate(config_from_dict(cfg), check_paths=False) if "use_torch_compile" in e]


def test_validate_accepts_compile_on_a_dense_model_with_data_parallelism():
    assert _compile_errors(_cfg(use_torch_compile=True)) == []
    assert validate(config_from_dict(_cfg(use_torch_compile=True)), check_paths=False) == []


@pytest.mark.parametrize("change,needle", [
    ({"actor_config": {"tensor_model_parallel_size": 2}}, "tp=2"),
    ({"actor_config": {"pipeline_model_parallel_size": 2}}, "pp=2"),
    ({"actor_config": {"lora": {"rank": 8}}}, "LoRA"),
    ({"actor_config": {"max_tokens_per_micro_batch": 512}}, "max_tokens_per_micro_batch"),
    ({"megatron_training": {"recompute": True}}, "recompute"),
    ({"backend": "npu"}, "backend npu"),
    ({"model": {"hf_config": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}}},
     "mixture-of-experts"),
])
def test_validate_refuses_compile_where_it_was_not_run(change, needle):
    cfg = _cfg(use_torch_compile=True)
    for section, values in change.items():
        if isinstance(values, dict):
            for k, v in values.items():
                if isinstance(v, dict) and isinstance(cfg[section].get(k), dict):
                    cfg[section][k].update(v)
                else:
                    cfg[section][k] = v
        else:
            cfg[section] = values
    errors = _compile_errors(cfg)
    assert len(errors) == 1 and needle in errors[0], errors
    cfg["actor_config"]["use_torch_compile"] = False
    assert _compile_errors(cfg) == []


def test_compiled_call_is_installed_only_inside_the_context():
    """The compiled call is each layer's `_compiled_call_impl` inside `compiled_layers` only (so the rollout,
    which shares the actor's modules, stays eager), also when the body raises; models never compiled are
    untouched. Nothing is called, so nothing compiles here."""
    from mindrl.models.compile import ATTR, compile_layers, compiled_layers, is_compiled

    def gpt():
        m = torch.nn.Module()
        m.decoder = torch.nn.Module()
        m.decoder.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
        return m

    a, b = gpt(), gpt()
    assert compile_layers([a]) == 3 and is_compiled([a]) and not is_compiled([b])
    first = [getattr(layer, ATTR) for layer in a.decoder.layers]
    compile_layers([a])  # idempotent: the same compiled callables
    assert [getattr(layer, ATTR) for layer in a.decoder.layers] == first
    with compiled_layers([a, b]):
        assert [layer._compiled_call_impl for layer in a.decoder.layers] == first
        assert all(layer._compiled_call_impl is None for layer in b.decoder.layers)
    assert all(layer._compiled_call_impl is None for layer in a.decoder.layers)
    with pytest.raises(RuntimeError):
        with compiled_layers([a]):
            raise RuntimeError("boom")
    assert all(layer._compiled_call_impl is None for layer in a.decoder.layers)
