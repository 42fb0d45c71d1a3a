"""Chunked log-probs and entropy equal a full-vocabulary float64 reference (values and gradients),
at TP=1 and TP=2, for chunks of one token, a few tokens, and the whole batch; the padded vocab
columns get no probability mass and a zero gradient. Runs logprobs_worker.py in a fresh process."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.tp_worker import tp_worker_results

WORKER = Path(__file__).with_name("logprobs_worker.py")
pytestmark = pytest.mark.megatron


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict[str, float]]:
    out = tmp_path_factory.mktemp("logprobs")
    return tp_worker_results(WORKER, out, timeout=300)


def test_all_ranks_reported(results):
    assert sorted(results) == ["tp1_rank0", "tp2_rank0", "tp2_rank1"]


@pytest.mark.parametrize("run", ["tp1_rank0", "tp2_rank0", "tp2_rank1"])
def test_chunked_equals_full_vocab_reference(results, run):
    r = results[run]
    checked = [k for k in r if k.endswith(("_logp", "_entropy", "_grad"))]
    assert len(checked) == 2 * 2 * 4 * 3
    for k in checked:
        assert r[k] <= 2e-5, f"{run} {k}: {r[k]}"
    assert r["T1.0_grad_scale"] > 0.1  # the gradients compared are not all ~0
    assert r["vs_megatron"] <= 2e-5 and r["entropy_fn"] <= 2e-5
