"""GRPO samples are a pure function of (seed, prompt, sample, step, round): the trainer's own
generation round (`generate_round`) gives the same completions for the same prompts at training
DP1 and DP2, and through a rollout layout other than training (train TP2 -> rollout TP1, two
replicas; train DP2 -> rollout TP2, one replica). Each layout runs in fresh processes (seed_worker.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.checkpoint.test_convert import convert
from tests.checkpoint.tiny import make_hf_model
from tests.conftest import REPO, shared_path

WORKER = REPO / "tests" / "rollout" / "seed_worker.py"
pytestmark = pytest.mark.megatron


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory) -> Path:
    return make_hf_model(shared_path("models"), "qwen2", tmp_path_factory.mktemp("hf") / "qwen2")


def samples(hf: Path, tmp: Path, nproc: int, tp: int, rollout_tp: int | None) -> dict:
    job = {"ckpt": str(convert(hf, tmp / "ckpt", "qwen2", tp=tp)), "tp": tp, "rollout_tp": rollout_tp}
    (tmp / "job.json").write_text(json.dumps(job))
    r = subprocess.run([sys.executable, str(WORKER), "--job", str(tmp / "job.json"), "--nproc", str(nproc),
                        "--out", str(tmp)], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-5000:]
    return json.loads((tmp / "samples.json").read_text())


@pytest.fixture(scope="module")
def dp1(hf_model, tmp_path_factory) -> dict:
    out = samples(hf_model, tmp_path_factory.mktemp("dp1"), nproc=1, tp=1, rollout_tp=None)
    assert sorted(out) == ["0", "1"] and all(sorted(map(int, out[r])) == [0, 1, 2, 3] for r in out)
    tokens = [t for r in out.values() for group in r.values() for t in group]
    assert len(tokens) == 2 * 4 * 3 and len({tuple(t) for t in tokens}) > 12  # sampled, not degenerate
    assert out["0"] != out["1"]  # rounds draw differently (other prompts and another seed)
    return out


def test_same_completions_at_dp1_and_dp2(hf_model, dp1, tmp_path):
    assert samples(hf_model, tmp_path, nproc=2, tp=1, rollout_tp=None) == dp1


@pytest.mark.slow
def test_same_completions_through_other_rollout_layouts(hf_model, dp1, tmp_path):
    assert samples(hf_model, tmp_path / "tp2_to_tp1", nproc=2, tp=2, rollout_tp=1) == dp1
    assert samples(hf_model, tmp_path / "dp2_to_tp2", nproc=2, tp=1, rollout_tp=2) == dp1
