"""Planned activations (one training micro-batch, measured on a few layers under fake tensors and
composed for the whole model) within 15% of the peak tracked memory of real CPU runs of the whole
model, at two sequence lengths and two micro-batch sizes; both grow together.

Reference: tests/plan/activations_worker.py `real` (real tensors, real gloo rank, torch's MemTracker
around the trainer's forward + fused log-prob + backward). The tiny Qwen2 has 4 layers, so the
plan's composition (first layer + one more of the kind, times the count) is exercised.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("activations_worker.py")


def case(rows: int, seq: int) -> dict:
    response = seq // 2
    return {"rows": rows, "seq": seq, "response": response, "overrides": [
        "model.scale_down.num_layers=4", "rl_config.actor_resource.num_npus=1", f"actor_config.micro_batch_size={rows}",
        "megatron_training.global_batch_size=8", f"megatron_training.seq_length={seq}",
        f"generate_config.max_model_len={seq}", f"rl_config.max_prompt_length={seq - response}",
        f"generate_config.sampling_config.max_tokens={response}"]}


def run(mode: str, cases: list[dict], tmp_path: Path) -> list[int]:
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out = tmp_path / f"{mode}.json"
    proc = subprocess.run([sys.executable, str(WORKER), mode, "--cases", str(tmp_path / "cases.json"), "--out",
                           str(out)], capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={**os.environ, "RANK": "0", "WORLD_SIZE": "1"} if mode == "real" else None)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text())


@pytest.mark.slow
def test_planned_activations_match_real_runs(tmp_path: Path) -> None:
    cases = [case(4, 64), case(4, 128), case(8, 64), case(8, 128)]
    planned, measured = run("plan", cases, tmp_path), run("real", cases, tmp_path)
    for c, p, m in zip(cases, planned, measured):
        assert abs(p - m) <= 0.15 * m, f"rows {c['rows']} x seq {c['seq']}: planned {p} vs measured {m}"
    # Both grow with the sequence and with the micro-batch, and by about the same factor.
    for (i, j) in ((0, 1), (2, 3), (0, 2), (1, 3)):
        assert planned[j] > planned[i] and measured[j] > measured[i]
        assert abs(planned[j] / planned[i] - measured[j] / measured[i]) <= 0.15 * measured[j] / measured[i]
