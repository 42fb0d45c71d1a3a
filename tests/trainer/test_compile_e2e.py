"""`actor_config.use_torch_compile` and `actor_config.compiled_logprob_tiles` through the trainer on the tiny
CPU demo: a compiled run resumed from its checkpoint equals an uninterrupted compiled run exactly, and its
first step equals the eager run's within the compiled-vs-eager tolerance of tests/workers/test_compiled_forward.py
(the rollout is eager in both, so step 1 samples the same tokens)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.megatron, pytest.mark.slow]


def _cmd(demo: Path, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "mindrl.cli.train_grpo", "--config-name", "grpo_tiny_cpu",
            f"megatron_training.output_dir={out}", f"megatron_training.tokenizer_name_or_path={demo / 'tokenizer'}",
            f"megatron_training.data_path={demo / 'data' / 'tiny'}", f"actor_config.load={demo / 'mg'}",
            "megatron_training.global_batch_size=4", "rl_config.n_samples_per_prompt=4", "actor_config.micro_batch_size=8",
            "rl_config.actor_resource.num_npus=1", "generate_config.sampling_config.max_tokens=24",
            "megatron_training.save_interval=1", *overrides]


def _train(demo: Path, out: Path, *overrides: str) -> list[dict]:
    proc = run_cli(_cmd(demo, out, *overrides), 1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("compiled", ["actor_config.use_torch_compile=true", "actor_config.compiled_logprob_tiles=true"],
                         ids=["layers", "logprob_tiles"])
def test_compiled_run_resumes_exactly_and_matches_eager(tiny_demo, tmp_path, compiled):
    whole = _train(tiny_demo, tmp_path / "whole", compiled, "megatron_training.train_iters=2")
    _train(tiny_demo, tmp_path / "resumed", compiled, "megatron_training.train_iters=1")
    resumed = _train(tiny_demo, tmp_path / "resumed", compiled, "megatron_training.train_iters=2")
    assert [m["step"] for m in resumed] == [1, 2]
    for key in ("reward/mean", "actor/pg_loss", "response_length/mean", "kl", "actor/grad_norm"):
        assert whole[1][key] == resumed[1][key], (key, whole[1][key], resumed[1][key])
    eager = _train(tiny_demo, tmp_path / "eager", "megatron_training.train_iters=1")
    assert eager[0]["response_length/mean"] == whole[0]["response_length/mean"]  # same samples
    for key in ("actor/pg_loss", "kl", "actor/grad_norm", "actor/entropy"):
        assert abs(eager[0][key] - whole[0][key]) <= 1e-5 * max(1.0, abs(eager[0][key])), key
