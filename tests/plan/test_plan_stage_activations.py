"""Planned activations of one micro-batch (fake tensors, a few layers measured and composed, balanced MoE
routing) within 15% of the peak tracked memory of real CPU runs, for MoE layers (EP1; EP2, each rank) and
for each stage of a pipeline, at two sequence lengths; both grow alike.

Reference: tests/plan/stage_activations_worker.py `real` (real tensors on real gloo ranks, the trainer's
own model with its dropless MoE dispatcher and real routing, torch's MemTracker around the trainer's
forward + fused log-prob + backward of each rank's own chunk). The whole-model dense TP1 case is
tests/plan/test_plan_activations.py.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("stage_activations_worker.py")

# The tiny DeepSeek-V3 (MLA, 1 dense + 3 MoE layers of 4 experts, top-2) with a small vocabulary, so that
# the layers, not the output layer, carry the activations.
DSV3 = ["model=tiny_deepseekv3", "model.scale_down.num_layers=4", "model.scale_down.vocab_size=256",
        "model.make_vocab_size_divisible_by=1"]
QWEN = ["model.scale_down.num_layers=4"]  # grpo_tiny_cpu's tiny Qwen2 (GQA, qkv bias)


def overrides(model: list[str], *, pp: int = 1, ep: int = 1, world: int = 1) -> list[str]:
    return model + [f"actor_config.pipeline_model_parallel_size={pp}", f"actor_config.expert_model_parallel_size={ep}",
                    f"rl_config.actor_resource.num_npus={world}", "actor_config.micro_batch_size=4",
                    "megatron_training.global_batch_size=8", "megatron_training.seq_length=128",
                    "generate_config.max_model_len=128", "rl_config.max_prompt_length=8",
                    "generate_config.sampling_config.max_tokens=8"]


CASES = [{"rows": 4, "seq": 64, "response": 32}, {"rows": 4, "seq": 128, "response": 64}]
JOBS = {
    "dsv3-moe-ep1": (overrides(DSV3), 1),
    "dsv3-moe-ep2": (overrides(DSV3, ep=2, world=2), 2),
    "qwen-pp2": (overrides(QWEN, pp=2, world=2), 2),
}


def run(mode: str, job: dict, nproc: int, tmp_path: Path) -> list[dict]:
    out = tmp_path / mode
    out.mkdir()
    (tmp_path / "job.json").write_text(json.dumps(job))
    cmd = [sys.executable, str(WORKER), mode, "--job", str(tmp_path / "job.json"), "--out", str(out)]
    if mode == "real":
        cmd += ["--nproc", str(nproc)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=2400)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # each case: a plan and a real run, minutes at load average 70 on 2 cores
@pytest.mark.parametrize("name", sorted(JOBS))
def test_planned_stage_activations_match_real_runs(name: str, tmp_path: Path) -> None:
    ov, nproc = JOBS[name]
    job = {"config": "grpo_tiny_cpu", "overrides": ov, "cases": CASES}
    planned = {r["stage"]: r["peaks"] for r in run("plan", job, nproc, tmp_path)}
    measured = run("real", job, nproc, tmp_path)  # per rank: EP ranks of one stage each measure their own
    assert sorted(r["rank"] for r in measured) == list(range(nproc))
    for r in measured:
        p, m = planned[r["stage"]], r["peaks"]
        print(f"{name} rank {r['rank']} (stage {r['stage']}): planned {p} measured {m} "
              f"ratio {[round(a / b, 3) for a, b in zip(p, m)]}")
        for c, pi, mi in zip(CASES, p, m):
            assert abs(pi - mi) <= 0.15 * mi, f"{name} rank {r['rank']}, seq {c['seq']}: planned {pi} vs measured {mi}"
        assert p[1] > p[0] and m[1] > m[0]
        assert abs(p[1] / p[0] - m[1] / m[0]) <= 0.15 * m[1] / m[0], f"{name} rank {r['rank']}: {p} vs {m}"
