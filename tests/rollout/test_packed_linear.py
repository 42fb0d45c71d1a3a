"""generate_config.packed_linear: the built-in engine's linears on weights packed once per generate call
(CPU: oneDNN, `mindrl.backends.packed_linear`).

Exactness: against the plain path (megatron's own matmuls) on the same tiny models, prompts and seeds the
packed engine gives the same tokens (sampled and greedy) and log-probs within TOL (fp32; observed ~2e-6, the
two kernels sum in a different order), and its sampled log-probs equal the training forward's within TOL
(the rollout gate of test_builtin_engine.py). Determinism: the same seed gives bit-identical outputs. The
packing is redone every call: after the weights change in place (an optimizer step) the packed engine
follows them. Refusals: validate() refuses the key where the backend has no packed linear or the engine
is not the built-in one, and the factory refuses it without a backend that has one.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mindrl.backends import get_backend
from mindrl.backends.packed_linear import OUT_CHUNK, onednn_supports
from tests.conftest import shared_path

WORKER = Path(__file__).with_name("packed_worker.py")
TOL = 1e-5
needs_onednn = pytest.mark.skipif(not onednn_supports(torch.float32), reason="torch here has no oneDNN")


@needs_onednn
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_onednn_linear_matches_f_linear(dtype, tol):
    """The backend's packed linear against `F.linear` (fp32 reference), bias or not, 2-D and 3-D inputs,
    other row counts than the packing hint, a non-contiguous input."""
    packer = get_backend("cpu").linear_packer(dtype)
    if packer is None:
        pytest.skip(f"this CPU has no oneDNN {dtype}")
    g = torch.Generator().manual_seed(0)
    out_features = 2 * OUT_CHUNK + 300  # with_out: three pieces, the last one short
    w, b = torch.randn(out_features, 64, generator=g), torch.randn(out_features, generator=g)
    linear, linear_out = packer(w.to(dtype), 16), packer(w.to(dtype), 16, with_out=True)
    buf = torch.full((16 * 5, out_features), float("nan"), dtype=dtype)
    for x in (torch.randn(16, 64, generator=g), torch.randn(3, 5, 64, generator=g),
              torch.randn(64, 7, generator=g).t(), torch.randn(1, 64, generator=g)):
        for bias in (None, b):
            bias_d = None if bias is None else bias.to(dtype)
            want = F.linear(x.to(dtype).float(), w.to(dtype).float(), bias if bias is None else bias.to(dtype).float())
            got = linear(x.to(dtype), bias_d).float()
            out = buf[:x.numel() // 64].view(*x.shape[:-1], out_features)
            got_out = linear_out(x.to(dtype), bias_d, out)
            assert got_out.data_ptr() == buf.data_ptr(), "with_out must write into the caller's buffer"
            for result in (got, got_out.float()):
                assert result.shape == want.shape
                assert (result - want).abs().max().item() <= tol * want.abs().max().item(), (dtype, x.shape)


def test_backends_without_packed_linear_say_none():
    assert get_backend("cuda").linear_packer(torch.float32) is None
    assert get_backend("npu").linear_packer(torch.bfloat16) is None
    assert get_backend("cpu").linear_packer(torch.int8) is None


@pytest.fixture(scope="module")
def packed_run(tmp_path_factory) -> dict:
    if not onednn_supports(torch.float32):
        pytest.skip("torch here has no oneDNN")
    shared_path("models")
    out = tmp_path_factory.mktemp("packed")
    proc = subprocess.run([sys.executable, str(WORKER), "--arch", "qwen2,deepseek_v3", "--out", str(out)],
                          capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return torch.load(out / "result.pt")


def _diff(a: list, b: list) -> tuple[bool, float]:
    """(same tokens in every row, max |log-prob difference|)."""
    same = all(x[0] == y[0] for x, y in zip(a, b)) and len(a) == len(b)
    return same, max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x[1], y[1]))


@pytest.mark.megatron
@pytest.mark.parametrize("arch", ["qwen2", "deepseek_v3"])
def test_packed_equals_plain_path(packed_run, arch):
    r = packed_run[arch]
    for name in ("sampled", "greedy"):
        same, diff = _diff(r[f"plain_{name}"], r[f"packed_{name}"])
        assert same, f"{arch}: packed {name} tokens differ from the plain path"
        assert diff <= TOL, f"{arch}: packed {name} log-probs differ from the plain path by {diff}"
    assert r["gate_diff"] <= TOL, f"{arch}: packed log-probs differ from the training forward by {r['gate_diff']}"
    assert r["greedy_is_argmax"]
    # Not vacuous: every 2-D weight that a megatron linear owns went through the packer (the LM head, tied to the
    # embedding, included), and the packed linears ran (every layer of every forward).
    packed = set(r["weights_packed"])
    assert (256, 64) in packed, "the LM head (vocab 250 padded to 256) was not packed"
    assert r["with_out"] == [(256, 64)], "the LM head (only) writes into the reused logits buffer"
    assert len(r["weights_packed"]) >= 9 and r["packed_calls"] > 8 * len(r["weights_packed"]) // 2
    assert r["pack_seconds"] > 0
    assert len({tok for row in r["packed_sampled"] for tok in row[0]}) > 8  # real, varied samples


@pytest.mark.megatron
@pytest.mark.parametrize("arch", ["qwen2", "deepseek_v3"])
def test_packed_is_deterministic_and_follows_weight_changes(packed_run, arch):
    r = packed_run[arch]
    assert r["packed_again"] == r["packed_sampled"], "same seed, same weights: outputs must be bit-identical"
    assert r["after_update_plain"] != r["plain_greedy"], "the weight change changed nothing (test is vacuous)"
    same, diff = _diff(r["after_update_plain"], r["after_update_packed"])
    assert same and diff <= TOL, f"{arch}: after a weight change the packed engine kept stale weights ({diff})"


@pytest.mark.megatron
@pytest.mark.parametrize("arch", ["qwen2", "deepseek_v3"])
def test_fused_sampler_matches_plain_path_and_training(packed_run, arch):
    """generate_config.fused_sampler: the LM head fused with the sampler (mindrl/rollout/fused_head.py), plain and
    packed, with prompts of 3-9 tokens (rows inside their prompt skip the LM head): the same tokens as the
    unfused plain engine and log-probs within TOL of it and of the training forward; deterministic; a prompt's
    samples do not depend on the other prompts of the call; it follows weight changes; greedy falls back."""
    r = packed_run[arch]
    assert r["fused_used"], "the fused path was not taken for plain temperature sampling (or was for greedy)"
    for name in ("fused_sampled", "packed_fused_sampled"):
        same, diff = _diff(r["plain_sampled"], r[name])
        assert same and diff <= TOL, f"{arch}: {name} differs from the unfused plain path (tokens {same}, {diff})"
        assert r[name + "_gate"] <= TOL, f"{arch}: {name} log-probs vs the training forward: {r[name + '_gate']}"
    assert r["fused_again"] == r["packed_fused_sampled"], "same seed, same weights: outputs must be bit-identical"
    # Prompts 1 and 3 alone (n = 2 rows each; a different common prefix, so prefilled differently: rounding only).
    same, diff = _diff(r["fused_subset"], [o for i, o in enumerate(r["packed_fused_sampled"]) if i // 2 % 2 == 1])
    assert same and diff <= TOL, f"{arch}: a prompt's samples depend on the other prompts of the call ({diff})"
    same, diff = _diff(r["plain_greedy"], r["fused_greedy"])
    assert same and diff <= TOL
    assert r["after_update_plain_sampled"] != r["plain_sampled"], "the weight change changed nothing (vacuous)"
    same, diff = _diff(r["after_update_plain_sampled"], r["after_update_fused"])
    assert same and diff <= TOL, f"{arch}: after a weight change the fused engine kept stale weights ({diff})"


def test_validate_refuses_fused_sampler_off_the_builtin_engine():
    assert _errors(generate_config__fused_sampler=True) == []
    errors = _errors(generate_config__fused_sampler=True, generate_config__engine="vllm")
    assert any("fused_sampler" in e and "engine=builtin" in e for e in errors), errors


def _errors(**changes) -> list[str]:
    from mindrl.config import config_from_dict, validate
    from tests.config.test_config import base

    return validate(config_from_dict(base(**changes)), check_paths=False)


def test_validate_accepts_and_refuses_packed_linear(monkeypatch):
    if onednn_supports(torch.float32):
        assert _errors(generate_config__packed_linear=True) == []
    errors = _errors(generate_config__packed_linear=True, backend="cuda")
    assert errors == ["generate_config.packed_linear=true: the cuda backend has no packed linear for float32 here "
                      "(CPU: needs torch with oneDNN, and for bfloat16 / float16 a CPU that runs them in it); "
                      "set it to false"], errors
    errors = _errors(generate_config__packed_linear=True, generate_config__engine="vllm")
    assert any(e.startswith("generate_config.packed_linear=true is for engine=builtin") for e in errors), errors
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)  # torch built without oneDNN
    errors = _errors(generate_config__packed_linear=True, backend="cpu")
    assert errors and errors[0].startswith("generate_config.packed_linear=true: the cpu backend has no packed "
                                           "linear for float32"), errors


def test_factory_refuses_without_a_packer():
    from mindrl.config import GenerateConfig
    from mindrl.rollout.factory import linear_packer

    on = GenerateConfig(packed_linear=True)
    with pytest.raises(ValueError, match="generate_config.packed_linear=true: the cuda backend has no packed linear"):
        linear_packer(on, get_backend("cuda"), torch.float32)
    with pytest.raises(ValueError, match="generate_config.packed_linear=true"):
        linear_packer(on, None, torch.float32)
    assert linear_packer(GenerateConfig(), None, torch.float32) is None
    if onednn_supports(torch.float32):
        assert linear_packer(on, get_backend("cpu"), torch.float32) is not None


def test_unset_packs_wherever_the_backend_can():
    """packed_linear None (the default): the backend's packer where it has one (CPU with oneDNN), none without an
    error where it has none (CUDA, NPU); false: never."""
    from mindrl.config import GenerateConfig
    from mindrl.rollout.factory import linear_packer

    unset, off = GenerateConfig(), GenerateConfig(packed_linear=False)
    assert unset.packed_linear is None
    assert linear_packer(unset, get_backend("cuda"), torch.float32) is None
    assert linear_packer(off, get_backend("cpu"), torch.float32) is None
    assert linear_packer(GenerateConfig(engine="vllm"), get_backend("cpu"), torch.float32) is None
    assert (linear_packer(unset, get_backend("cpu"), torch.float32) is not None) == onednn_supports(torch.float32)
    assert _errors(backend="cuda") == []
    assert not [e for e in _errors(generate_config__engine="vllm") if "packed_linear" in e]


@pytest.mark.slow
@pytest.mark.megatron
@needs_onednn
@pytest.mark.parametrize("fused", [False, True], ids=["packed", "packed-fused"])
def test_grpo_step_with_packed_linear(tiny_demo, tmp_path, fused):
    """The trainer's path (`train_grpo`, `build_rollout(..., backend=)`): with packed_linear on (and fused_sampler),
    step 1's rollout log-probs equal the training forward's (`rollout/logprob_diff_*`, the same bounds as the
    plain path's in tests/trainer/test_grpo_e2e.py). Without the backend reaching the factory the run fails at
    start-up."""
    from tests.trainer.test_grpo_e2e import metrics, run, train_cmd

    out = tmp_path / "run"
    proc = run(train_cmd(tiny_demo, out, "megatron_training.train_iters=1", "generate_config.packed_linear=true",
                         f"generate_config.fused_sampler={'true' if fused else 'false'}"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    step1 = metrics(out)[0]
    assert step1["rollout/logprob_diff_mean"] < 1e-5 and step1["rollout/logprob_diff_max"] < 1e-4, step1
