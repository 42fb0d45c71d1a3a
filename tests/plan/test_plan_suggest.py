"""`python -m mindrl.plan --suggest N`: what it lists fits, what it leaves out as not fitting does not, its
order is the stated cost, and a device count no layout can use is refused.

Reference: the planner's plain path (`plan_job` on a fresh config with the candidate's own overrides, nothing
reused from the search), in tests/plan/suggest_worker.py; the cost by hand from docs/plan.md's formula.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mindrl.models.flops import step_flops

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("suggest_worker.py")
MiB = 1024 ** 2

# grpo_tiny_cpu's tiny Qwen2 with 4 layers; a small KV cache and push bucket, so states and activations decide.
TINY = ["model.scale_down.num_layers=4", "actor_config.micro_batch_size=4", "generate_config.max_num_seqs=4",
        "generate_config.weight_bucket_mb=0.25"]


@pytest.mark.timeout(1800)  # about 1 min of CPU; took 10 at load average 70 on 2 cores
def test_suggested_layouts_fit_and_left_out_ones_do_not(tmp_path: Path) -> None:
    # The demo's 128-wide model at 4 layers. 20 MiB: TP2 (about 13.1 MiB) and PP2 (19.1) fit, TP1 PP1 (22.4) does
    # not; 5 MiB: every layout's weights, grads, reference and Adam moments alone (5.7 MiB and more) rule it out
    # unplanned, nothing fits.
    caps = [20 * MiB, 5 * MiB]
    job = {"config": "grpo_tiny_cpu", "overrides": TINY, "devices": 2, "capacities": caps, "top": 10}
    (tmp_path / "job.json").write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, str(WORKER), "--job", str(tmp_path / "job.json"), "--out",
                           str(tmp_path / "out.json")], capture_output=True, text=True, cwd=ROOT, timeout=2400)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    out = json.loads((tmp_path / "out.json").read_text())
    plain = out["plain"]
    fit, omitted = out["suggestions"]
    # 2 devices: TP1 PP1, TP2, PP2, PP2 + offload (offload needs a rollout with its own weights: only PP2's).
    names = {c["name"] for c in fit["candidates"]}
    assert names == {"TP1 PP1 EP1", "TP2 PP1 EP1", "TP1 PP2 EP1", "TP1 PP2 EP1 offload"}, names
    assert sum(fit["invalid"].values()) == 2 and all("offload_train_state" in k for k in fit["invalid"])
    for result, cap in ((fit, caps[0]), (omitted, caps[1])):
        for c in result["candidates"]:
            assert c["bound"] <= plain[c["name"]], f"{c['name']}: the bound {c['bound']} is no lower bound"
            if c["status"] == "fits":
                assert c["peak"] == plain[c["name"]] <= cap, c
            else:
                assert c["status"] in ("does not fit", "pruned") and plain[c["name"]] > cap, c
        assert [c["name"] for c in result["suggested"]] == [c["name"] for c in result["candidates"]
                                                            if c["status"] == "fits"]
    assert {c["name"] for c in fit["suggested"]} >= {"TP2 PP1 EP1", "TP1 PP2 EP1"}
    assert [c["status"] for c in fit["candidates"] if c["name"] == "TP1 PP1 EP1"] == ["does not fit"]
    assert omitted["fits"] is False and not omitted["suggested"]
    assert [c["status"] for c in omitted["candidates"] if c["name"] == "TP1 PP1 EP1"] == ["pruned"]
    # Ranked by the stated cost, cheapest first.
    costs = [c["cost_s"] for c in fit["candidates"]]
    assert costs == sorted(costs)
    # TP2 by hand (docs/plan.md): compute = training FLOPs / 2 devices / 150e12; TP traffic = 4 passes (reference,
    # old log-probs, update forward + backward) x 2 all-reduces x 2 (TP-1)/TP x 8192 tokens (16 prompts x 8 samples x
    # (24 + 40)) / DP 1 x hidden 128 x 4 bytes x 4 layers / 150e9 B/s; no bubble, no DP / EP / offload traffic.
    hf = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 256, "vocab_size": 64}
    f = step_flops(hf, [24] * 16, [[40] * 8] * 16, reference=True, old_log_probs=True)
    compute = (f["update"] + f["reference"] + f["old_log_probs"]) / 2 / 150e12
    tp = 4 * 2 * 2 * (1 / 2) * 8192 * 128 * 4 * 4 / 150e9
    (tp2,) = [c for c in fit["candidates"] if c["name"] == "TP2 PP1 EP1"]
    assert abs(tp2["cost_s"] - (compute + tp)) <= 1e-9 * tp2["cost_s"], (tp2["cost_parts"], compute, tp)


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """The CLI in this process: a refusal comes before any simulated rank (which must not leak into pytest)."""
    from mindrl.plan.__main__ import main

    rc = main(["--config-name", "grpo_tiny_cpu", *args])
    return rc, capsys.readouterr().err


def test_a_device_count_no_layout_can_use_is_refused(capsys: pytest.CaptureFixture) -> None:
    rc, err = _cli(capsys, "--device-gb", "1", "--suggest", "0")
    assert rc == 2 and "--suggest 0: the device count must be >= 1" in err, err
    # 5 ranks: TP5 misses the 4 heads, PP5 exceeds the 4 layers, DP5 does not divide the batch.
    rc, err = _cli(capsys, "--device-gb", "1", "--suggest", "5", *TINY)
    assert rc == 2 and "no layout of 5 devices passes validate()" in err, err
    assert "micro_batch_size x data-parallel size = 4 x 5" in err, err
    rc, err = _cli(capsys, "--suggest", "2")
    assert rc == 2 and "--suggest needs the device memory" in err, err
    rc, err = _cli(capsys, "--device-gb", "1", "--suggest", "4", "--nodes", "3", "--devices-per-node", "2")
    assert rc == 2 and "nodes x devices per node must be the device count" in err, err
