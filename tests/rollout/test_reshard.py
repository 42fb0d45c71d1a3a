"""Rollout in its own layout: after a push the rollout weights are a direct conversion of the
training weights (bit for bit) and the rollout log-probs are the training forward's (fp32,
<= 1e-5); after an optimizer step the next generate sees the new weights (and a skipped push is
caught). Layouts: train TP2 -> rollout TP1 (two replicas), train PP2 -> rollout TP2, DeepSeek-V3
train EP2 -> rollout EP1, DeepSeek-V3 train TP2 -> rollout EP2 (each rank receives only its
experts). Each case runs in fresh processes (reshard_worker.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.checkpoint.test_convert import convert
from tests.checkpoint.tiny import make_hf_model
from tests.conftest import REPO, shared_path

WORKER = REPO / "tests" / "rollout" / "reshard_worker.py"
TOL = 1e-5
pytestmark = pytest.mark.megatron


def run_case(tmp: Path, arch: str, train: dict, rollout: dict, skip_push: bool = False) -> list[dict]:
    hf = make_hf_model(shared_path("models"), arch, tmp / "hf")
    job = {"arch": arch, **train, "rollout_tp": rollout["tp"], "rollout_ep": rollout["ep"], "skip_push": skip_push,
           "train_ckpt": str(convert(hf, tmp / "train", arch, **train)),
           "rollout_ckpt": str(convert(hf, tmp / "rollout", arch, tp=rollout["tp"], ep=rollout["ep"]))}
    (tmp / "job.json").write_text(json.dumps(job))
    r = subprocess.run([sys.executable, str(WORKER), "--job", str(tmp / "job.json"), "--nproc", "2", "--out", str(tmp)],
                       capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-5000:]
    return [torch.load(tmp / f"rank{i}.pt", weights_only=False) for i in range(2)]


def assert_case(ranks: list[dict], replicas: int) -> None:
    assert sorted(r["replica"] for r in ranks)[-1] == (replicas - 1, replicas)
    for r in ranks:
        assert r["weights_equal"] and r["weights_max_diff"] == 0.0, r["weights_max_diff"]
        assert r["gate_diff"] <= TOL, f"rollout log-probs differ from the training forward by {r['gate_diff']}"
        assert r["changed"], "the optimizer step did not change the weights: the stale check would be vacuous"
        assert r["updated_max_diff"] == 0.0, f"rollout holds stale weights (max diff {r['updated_max_diff']})"
        assert r["pushes"] == 2
        tokens = [o[2] for o in r["outputs"]]
        assert all(len(t) == 6 for t in tokens) and len({x for t in tokens for x in t}) > 4


def test_train_tp2_to_rollout_tp1_two_replicas(tmp_path):
    ranks = run_case(tmp_path, "qwen2", {"tp": 2, "pp": 1, "ep": 1}, {"tp": 1, "ep": 1})
    assert_case(ranks, replicas=2)
    # Training DP = 1: both TP ranks asked for the same prompts and got the same samples.
    assert ranks[0]["outputs"] == ranks[1]["outputs"]


@pytest.mark.slow
def test_train_pp2_to_rollout_tp2(tmp_path):
    assert_case(run_case(tmp_path, "qwen2", {"tp": 1, "pp": 2, "ep": 1}, {"tp": 2, "ep": 1}), replicas=1)


@pytest.mark.slow
def test_deepseek_train_ep2_to_rollout_ep1(tmp_path):
    assert_case(run_case(tmp_path, "deepseek_v3", {"tp": 1, "pp": 1, "ep": 2}, {"tp": 1, "ep": 1}), replicas=2)


@pytest.mark.slow
def test_deepseek_train_tp2_to_rollout_ep2_sends_each_rank_its_experts(tmp_path):
    """Rollout EP2: each rank's copy holds half the experts and the push sends it only those
    (HFShardLoader.expert_ids); its shard still equals the direct conversion bit for bit."""
    ranks = run_case(tmp_path, "deepseek_v3", {"tp": 2, "pp": 1, "ep": 1}, {"tp": 1, "ep": 2})
    assert_case(ranks, replicas=2)
    for r in ranks:  # not every expert of the tiny model: the push skipped the other rank's
        assert 0 < len(r["expert_ids"]) < r["num_experts"], r["expert_ids"]


@pytest.mark.slow
def test_skipped_push_is_caught(tmp_path):
    """Without weights_updated() after the step the rollout keeps the old weights: the check sees it."""
    ranks = run_case(tmp_path, "qwen2", {"tp": 2, "pp": 1, "ep": 1}, {"tp": 1, "ep": 1}, skip_push=True)
    for r in ranks:
        assert r["changed"] and r["pushes"] == 1
        assert r["updated_max_diff"] > 0.0
