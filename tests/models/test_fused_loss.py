"""The output layer with the loss fused in (mindrl.models.fused_loss, actor_config.head_grad_in_forward): its
gradients, computed in the forward one block of tokens at a time, equal float64 autograd over the full vocabulary
(loss, log-probs, entropy, hidden and weight gradients) for a linear loss, GRPO's clipped surrogate + KL, the same
with an entropy bonus, blocks of 1, 4 and all tokens, tiles of 7 vocab columns, temperatures 0.7 and 1, eager and
compiled tiles, an upstream gradient of 0.37 and a frozen weight, at TP=1 and TP=2 with padded vocab rows; a
sequence-level (GSPO-like) loss is detected as not token-separable and recomputed, still exact; and through
megatron's schedule and DDP every parameter's gradient equals the log-probs' own backward (tied / untied, sequence
parallelism, compiled tiles). Runs fused_loss_worker.py in a fresh process."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mindrl.models.logprob_tiles import has_cxx_compiler
from tests.models.test_fused_head import expected_model_cases
from tests.tp_worker import tp_worker_results

WORKER = Path(__file__).with_name("fused_loss_worker.py")
pytestmark = pytest.mark.megatron
RUNS = ["tp1_rank0", "tp2_rank0", "tp2_rank1"]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    return tp_worker_results(WORKER, tmp_path_factory.mktemp("fused_loss"), timeout=400)


def test_all_ranks_reported(results):
    assert sorted(results) == RUNS


@pytest.mark.parametrize("run", RUNS)
def test_fused_loss_equals_float64_reference(results, run):
    r = results[run]
    cases = sorted({k.rsplit("_", 1)[0] for k in r if k.startswith("op_") and k.endswith("_separable")})
    compiled = 2 if has_cxx_compiler() else 1
    # losses x temperatures x (3 block sizes + 7-column tiles) (x compiled) + 2 + 3 into main_grad + 2 "tail"
    # + 3 on the backend's logits kernel (where it has one)
    from mindrl.backends import get_backend
    onednn = 3 if get_backend("cpu").logits_matmul(torch.float32) is not None else 0
    assert len(cases) == 4 * 2 * 4 * compiled + 2 + 3 + 2 + onednn
    assert r["main_grad_mismatch_refused"] == 1.0, run
    for case in cases:
        for what in ("loss", "logp", "entropy", "hgrad"):
            assert r[f"{case}_{what}"] <= 2e-5, (run, case, what, r[f"{case}_{what}"])
        if case.endswith("_frozen"):
            assert r[f"{case}_wgrad"] == -1.0  # no gradient for a weight that does not want one
        else:
            assert r[f"{case}_wgrad"] <= 2e-5, (run, case, r[f"{case}_wgrad"])
        assert r[f"{case}_grad_scale"] > 0.01, (run, case)  # the gradients compared are not all ~0
        if "_main_dummy" in case or "_main_none" in case:
            assert r[f"{case}_returned"] == 1.0, (run, case)
        # Token-separable losses use the gradients computed block by block; the sequence-level one cannot, unless
        # one block holds every token (the default budget here: the per-block gradient is then the whole one).
        several_blocks = "_bNone" not in case
        coupled = case.startswith(("op_sequence", "op_tail")) and several_blocks
        assert r[f"{case}_separable"] == (0.0 if coupled else 1.0), (run, case)
        # what was kept: every token where separable, none where the first block's tokens are coupled to later
        # ones (sequence), the blocks before the coupled half (tail)
        if case.startswith("op_tail"):
            assert 0.0 < r[f"{case}_kept"] < 1.0, (run, case, r[f"{case}_kept"])
        else:
            assert r[f"{case}_kept"] == (0.0 if coupled else 1.0), (run, case, r[f"{case}_kept"])


@pytest.mark.parametrize("run", RUNS)
def test_fused_loss_bf16_weights(results, run):
    """bf16 weights: the same bf16 logits as the log-probs' fused path, gradients within bf16 rounding."""
    r = results[run]
    assert r["bf16_logp"] <= 2e-5, run
    assert r["bf16_hgrad"] <= 0.02 and r["bf16_wgrad"] <= 0.02, (run, r["bf16_hgrad"], r["bf16_wgrad"])


@pytest.mark.parametrize("run", RUNS)
def test_fused_loss_through_megatron_equals_logprob_backward(results, run):
    r = results[run]
    cases = expected_model_cases(run)
    assert sorted(k[len("model_"):-len("_grad")] for k in r if k.startswith("model_") and k.endswith("_grad")) \
        == sorted(cases)
    for case in cases:
        key = f"model_{case}"
        assert r[key + "_loss"] <= 1e-5 and r[key + "_logp"] <= 1e-5, (run, case)
        assert r[key + "_grad"] <= 1e-5, (run, case, r[key + "_grad"])
        assert r[key + "_nonzero_grads"] == 1.0, (run, case)
        # the CPU backend's sparse word-embedding gradient: in use, and equal to megatron's dense one
        assert r[key + "_sparse_embeddings"] >= 1.0, (run, case)
        assert r[key + "_dense_embedding_diff"] <= 1e-6, (run, case, r[key + "_dense_embedding_diff"])
