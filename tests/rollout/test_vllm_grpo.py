"""GRPO end to end with `generate_config.engine=vllm` on the real vLLM-CPU engine (slow): the log-prob
agreement metrics every step, and the tiny demo learning with vLLM as its rollout engine.

The tiny demo recipe (configs/grpo_tiny_cpu.yaml) with two attention heads instead of four: vLLM's CPU
attention has no kernel for the demo's head_dim of 16 (the engine refuses it; docs/rollout.md), 32 it
runs. Every step the trainer compares vLLM's sampled-token log-probs with the training model's
(`rollout/logprob_diff_mean`, `rollout/logprob_diff_max`, defined by the rollout-fidelity issue): in fp32
both stay <= 1e-3 at step 1 and after every weight push, so a stale or wrong push shows at once.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, build_tiny_demo, demo_train_cmd, run_cli

HEADS = ("model.scale_down.num_heads=2", "model.scale_down.num_kv_heads=1")  # head_dim 32
pytestmark = [pytest.mark.megatron, pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")]


def test_grpo_with_vllm_logs_logprob_agreement_every_step(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    demo = build_tiny_demo(tmp_path / "demo", "--num-tasks", "200", "--warm-steps", "20", *HEADS)
    out = tmp_path / "run"
    cmd = demo_train_cmd(demo, out, *HEADS, "generate_config.engine=vllm",
                         "generate_config.gpu_memory_utilization=0.05", "megatron_training.train_iters=3",
                         "megatron_training.global_batch_size=4", "rl_config.n_samples_per_prompt=4",
                         "actor_config.micro_batch_size=8", "rl_config.actor_resource.num_npus=1",
                         "generate_config.sampling_config.max_tokens=24", "megatron_training.save_interval=0")
    proc = run_cli(cmd, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["rollout/logprob_diff_mean"] <= 1e-3 and r["rollout/logprob_diff_max"] <= 1e-3, r
    assert rows[0]["actor/ppo_kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: vLLM's log-probs are the policy's


@pytest.mark.timeout(5400)
@pytest.mark.xfail(reason="measured 2026-12-07: with 2 heads the demo's warm start reaches 0.091 accuracy and GRPO "
                          "gains +0.041 with vLLM and +0.029 with the built-in engine (same warm start), not the demo's "
                          "+0.3: the demo is tuned for 4 heads (head_dim 16), which vLLM-CPU cannot run", strict=False)
def test_tiny_demo_learns_with_vllm(tmp_path, monkeypatch):
    """examples/grpo/grpo_trainer_tiny.sh with engine=vllm, its own verdict (accuracy +0.3 on held-out prompts,
    or the script fails). The demo's model with 2 heads, as above: prepared first with the same overrides
    (the script passes its arguments to training only), then the script skips its own preparation."""
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    out = tmp_path / "tiny"
    prep = run_cli([sys.executable, "-m", "mindrl.cli.prepare_tiny_demo", "--out", str(out), *HEADS,
                    f"megatron_training.tokenizer_name_or_path={out / 'tokenizer'}"], timeout=1800)
    assert prep.returncode == 0, prep.stderr[-3000:]
    proc = subprocess.run(["bash", "examples/grpo/grpo_trainer_tiny.sh", *HEADS, "generate_config.engine=vllm",
                           "generate_config.gpu_memory_utilization=0.05"], cwd=REPO, capture_output=True, text=True,
                          timeout=5000, env={**os.environ, "OUTPUT_DIR": str(out)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
