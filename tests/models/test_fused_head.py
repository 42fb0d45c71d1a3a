"""The output layer fused with the chunked log-probs, on selected (response) positions only, equals
(1) a float64 full-vocabulary reference in log-probs, entropy and the hidden states' and weight's
gradients, for tiles of token rows and of vocab columns (ragged last chunk, several row blocks, labels
in every chunk, padded vocab rows), temperatures 0.7 and 1, log-prob-only gradients, and bf16 weights
(also against megatron's unfused bf16 path), and (2) the unfused path (full logits from megatron's output
layer, then `token_log_probs_and_entropy`) in log-probs, entropy and every model parameter's gradient
after a backward through megatron's schedule and DDP; tied and untied embeddings, temperature 0.7,
TP=1 and TP=2 (with and without sequence parallelism); (3) the same with the tiles' elementwise work in compiled
kernels (actor_config.compiled_logprob_tiles). Runs fused_head_worker.py in a fresh process."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mindrl.models.logprob_tiles import has_cxx_compiler
from tests.tp_worker import tp_worker_results

WORKER = Path(__file__).with_name("fused_head_worker.py")
pytestmark = pytest.mark.megatron


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("fused_head")
    return tp_worker_results(WORKER, out, timeout=400)


def test_all_ranks_reported(results):
    assert sorted(results) == ["tp1_rank0", "tp2_rank0", "tp2_rank1"]


@pytest.mark.parametrize("run", ["tp1_rank0", "tp2_rank0", "tp2_rank1"])
def test_fused_op_equals_float64_reference(results, run):
    r = results[run]
    checked = [k for k in r if k.startswith("op_") and k.endswith(("_logp", "_entropy", "_hgrad", "_wgrad"))]
    # 3 token-row tilings; 3 vocab-column tilings x 2 temperatures; log-prob-only gradient: 4 values each
    assert len(checked) == (3 + 3 * 2 + 1) * 4
    for k in checked:
        assert r[k] <= 2e-5, f"{run} {k}: {r[k]}"
    assert r["op_grad_scale"] > 0.1  # the gradients compared are not all ~0
    assert r["op_label_chunks"] == 36  # the labels fall in every one of the 7-column chunks (250 = 35 x 7 + 5)


@pytest.mark.parametrize("run", ["tp1_rank0", "tp2_rank0", "tp2_rank1"])
def test_backend_logits_matmul_equals_float64_reference(results, run):
    """The CPU backend's kernel for the logits tiles (oneDNN's inner product, Backend.logits_matmul): the same
    log-probs, entropy and gradients as float64 autograd (ragged column chunks, several row blocks)."""
    from mindrl.backends import get_backend

    if get_backend("cpu").logits_matmul(torch.float32) is None:
        pytest.skip("torch has no oneDNN here: the CPU backend gives no logits kernel (torch.mm is used)")
    r = results[run]
    checked = [k for k in r if k.startswith("backend_") and k.endswith(("_logp", "_entropy", "_hgrad", "_wgrad"))]
    assert len(checked) == 2 * 4
    for k in checked:
        assert r[k] <= 2e-5, f"{run} {k}: {r[k]}"


@pytest.mark.parametrize("run", ["tp1_rank0", "tp2_rank0", "tp2_rank1"])
def test_compiled_tiles_equal_float64_reference(results, run):
    """actor_config.compiled_logprob_tiles: the tiles' elementwise work in compiled kernels gives the same
    log-probs, entropy and gradients as float64 autograd (ragged column chunks, several row blocks, both
    temperatures, log-prob-only gradients); `entropy=False` returns None and the same log-probs bit for bit."""
    if not has_cxx_compiler():
        pytest.skip("no C++ compiler on PATH: inductor cannot build the compiled tiles (validate() refuses the key)")
    r = results[run]
    checked = [k for k in r if k.startswith("compiled_") and k.endswith(("_logp", "_entropy", "_hgrad", "_wgrad"))]
    assert len(checked) == (2 * 2 + 1) * 4
    for k in checked:
        assert r[k] <= 2e-5, f"{run} {k}: {r[k]}"
    assert r["entropy_off_is_none"] == 1.0 and r["entropy_off_logp"] == 0.0, run


@pytest.mark.parametrize("run", ["tp1_rank0", "tp2_rank0", "tp2_rank1"])
def test_fused_op_bf16_weights(results, run):
    """bf16 weights: within bf16 rounding of float64 on the rounded inputs, and the same logits (hence
    log-probs to fp32 rounding) as megatron's unfused bf16 path; gradients within 2 bf16 ulps of it."""
    r = results[run]
    for tiles in ("bf16_tileNonexNone", "bf16_tile40x7"):
        assert r[tiles + "_logp"] <= 0.06 and r[tiles + "_entropy"] <= 0.06, (run, tiles)
        for grad in ("_hgrad", "_wgrad"):
            assert r[tiles + grad] <= 0.03 * r["op_grad_scale"], (run, tiles, grad, r[tiles + grad])
    assert r["bf16_vs_unfused_logp"] <= 2e-5 and r["bf16_vs_unfused_entropy"] <= 2e-5, run
    assert r["bf16_vs_unfused_hgrad"] <= 0.02 * r["bf16_grad_scale"], run
    assert r["bf16_vs_unfused_wgrad"] <= 0.02 * r["bf16_grad_scale"], run
    assert r["bf16_grad_scale"] > 0.1


def expected_model_cases(run: str) -> list[str]:
    """The model comparisons a run reports (fused_head_worker.model_cases): SP at TP 2, compiled tiles with a
    C++ compiler."""
    return (["tied", "untied"] + (["tied_compiled"] if has_cxx_compiler() else [])
            + (["tied_sp"] if run.startswith("tp2") else []))


@pytest.mark.parametrize("run", ["tp1_rank0", "tp2_rank0", "tp2_rank1"])
def test_fused_model_equals_unfused(results, run):
    r = results[run]
    cases = expected_model_cases(run)
    assert sorted(k[len("model_"):-len("_logp")] for k in r if k.startswith("model_") and k.endswith("_logp")) \
        == sorted(cases)
    for case in cases:
        key = f"model_{case}"
        assert r[key + "_logp"] <= 1e-5 and r[key + "_entropy"] <= 1e-5, (run, case)
        assert r[key + "_grad"] <= 1e-5, (run, case, r[key + "_grad"])  # relative to each parameter's largest
        assert r[key + "_nonzero_grads"] == 1.0, (run, case)  # every parameter got a gradient to compare
    # Untied: the output layer has its own weight, and it was compared.
    assert any("output_layer.weight" in n for n in r["model_untied_params"])
    assert not any("output_layer.weight" in n for n in r["model_tied_params"])
