"""Planned weight / grad / main-param / optimizer bytes per rank == what real CPU runs hold, exactly.

Reference: tests/plan/states_worker.py builds the actor on real gloo ranks, takes an optimizer step
and sums the live tensors' `nbytes` on each rank (its own counting, not mindrl.plan's). The plan is
`python -m mindrl.plan --states-only --all-ranks --json` (a process of its own, as in use), which
simulates every rank of the world.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("states_worker.py")
ROWS = ("params", "weights", "grads", "main_params", "optimizer")

QWEN = ["model.scale_down.num_layers=4"]  # grpo_tiny_cpu: the tiny Qwen2 (2 KV heads, qkv bias)
DSV3 = ["model=tiny_deepseekv3", "model.scale_down.num_layers=4", "model.make_vocab_size_divisible_by=1",
        "rl_config.max_prompt_length=8", "generate_config.sampling_config.max_tokens=8"]


def layout(tp: int = 1, pp: int = 1, ep: int = 1, vps: int | None = None, dist_opt: bool = True,
           bf16: bool = False, dp: int = 1) -> list[str]:
    world = tp * pp * max(ep, dp)  # megatron: world / PP must hold whole expert-TP (= TP) x EP groups
    out = [f"actor_config.tensor_model_parallel_size={tp}", f"actor_config.pipeline_model_parallel_size={pp}",
           f"actor_config.expert_model_parallel_size={ep}", f"rl_config.actor_resource.num_npus={world}",
           f"megatron_training.use_distributed_optimizer={str(dist_opt).lower()}",
           f"megatron_training.bf16={str(bf16).lower()}", "actor_config.micro_batch_size=1",
           "megatron_training.global_batch_size=4"]
    if vps:
        out.append(f"actor_config.num_layers_per_virtual_pipeline_stage={vps}")
    return out


def planned(overrides: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "mindrl.plan", "--config-name", "grpo_tiny_cpu", "--states-only",
                           "--all-ranks", "--json", *overrides], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def real(overrides: list[str], world: int, tmp_path: Path) -> list[dict]:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"config": "grpo_tiny_cpu", "overrides": overrides}))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, str(WORKER), "--job", str(job), "--nproc", str(world), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def check(overrides: list[str], world: int, tmp_path: Path) -> None:
    plan = planned(overrides)
    ranks = real(overrides, world, tmp_path)
    assert len(ranks) == world
    by_rank = {s["rank"]: s for s in plan["stages"]}
    for r in ranks:
        assert by_rank[r["rank"]]["stage"] == r["stage"]
        want = {k: by_rank[r["rank"]][k] for k in ROWS}
        got = {k: r[k] for k in ROWS}
        assert got == want, f"rank {r['rank']} (stage {r['stage']}): real {got} != planned {want}"


LAYOUTS = {  # the default suite: one MoE layout with the distributed optimizer (ranks' shards differ)
    "dsv3-ep2-tp1": (DSV3 + layout(ep=2), 2),
}
SLOW_LAYOUTS = {
    "qwen-tp2-distopt": (QWEN + layout(tp=2), 2),
    "qwen-tp2-adam": (QWEN + layout(tp=2, dist_opt=False), 2),
    "qwen-pp2-bf16": (QWEN + layout(pp=2, bf16=True), 2),
    "qwen-pp2-vpp": (QWEN + layout(pp=2, vps=1), 2),
    "qwen-dp2-bf16-distopt": (QWEN + layout(bf16=True, dp=2), 2),
    "dsv3-tp2": (DSV3 + layout(tp=2, bf16=True), 2),
    "dsv3-tp2-ep2": (DSV3 + layout(tp=2, ep=2), 4),
    "dsv3-ep2-adam-bf16": (DSV3 + layout(ep=2, dist_opt=False, bf16=True), 2),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_planned_bytes_equal_real_tensors(name: str, tmp_path: Path) -> None:
    overrides, world = LAYOUTS[name]
    check(overrides, world, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_LAYOUTS))
def test_planned_bytes_equal_real_tensors_more_layouts(name: str, tmp_path: Path) -> None:
    overrides, world = SLOW_LAYOUTS[name]
    check(overrides, world, tmp_path)
