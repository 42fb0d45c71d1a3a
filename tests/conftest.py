"""Shared test fixtures: where ../shared lives, and skipping cleanly when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MINDRL_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a reason naming what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: tests that use real tokenizers/configs/data need ../shared "
                    f"(or MINDRL_SHARED=/path/to/shared)")
    return path


@pytest.fixture
def shared() -> Path:
    if not SHARED.exists():
        pytest.skip(f"{SHARED} not found (set MINDRL_SHARED)")
    return SHARED


def run_cli(cmd: list[str], timeout: int = 600):
    """Run a command from the repository root, as a user would (warnings silenced)."""
    import subprocess

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def build_tiny_demo(d: Path, *prepare_args: str, timeout: int = 600) -> Path:
    """The tiny CPU demo's files in `d`, as examples/grpo/grpo_trainer_tiny.sh builds them: `prepare_tiny_demo`
    (character tokenizer, prompt sets, a warm start saved as HF in `warm_start/`) with `prepare_args`, then
    `tools/convert_ckpt.py` to megatron at TP=1 (`mg/`)."""
    import sys

    proc = run_cli([sys.executable, "-m", "mindrl.cli.prepare_tiny_demo", "--out", str(d), *prepare_args,
                    f"megatron_training.tokenizer_name_or_path={d / 'tokenizer'}"], timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli([sys.executable, "tools/convert_ckpt.py", "--model-type-hf", "qwen2", "--load-model-type", "hf",
                    "--save-model-type", "mg", "--load-dir", str(d / "warm_start"), "--save-dir", str(d / "mg"),
                    "--target-tensor-parallel-size", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d


def demo_train_cmd(demo: Path, out: Path, *overrides: str) -> list[str]:
    """`train_grpo` on the demo recipe (grpo_tiny_cpu) with `demo`'s files, as the demo script runs it."""
    import sys

    return [sys.executable, "-m", "mindrl.cli.train_grpo", "--config-name", "grpo_tiny_cpu",
            f"megatron_training.output_dir={out}", f"megatron_training.tokenizer_name_or_path={demo / 'tokenizer'}",
            f"megatron_training.data_path={demo / 'data' / 'tiny'}", f"actor_config.load={demo / 'mg'}", *overrides]


def metrics(out: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, one dict per logged step."""
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_sigkill_rerun_matches(cmd_for, tmp_path: Path, steps: int, keys: tuple[str, ...]) -> None:
    """Kill -9 a run of `cmd_for(out)` once it has logged half its `steps`, rerun the same command, and check
    every step's `keys` equal those of an uninterrupted run, exactly (exact resume, as a user reruns a job)."""
    import signal
    import subprocess
    import time

    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_cli(cmd_for(full), timeout=1200).returncode == 0
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd_for(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 500
    while time.time() < deadline:
        if (killed / "metrics.jsonl").exists() and len(metrics(killed)) >= steps // 2:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(metrics(killed)) < steps
    assert run_cli(cmd_for(killed), timeout=1200).returncode == 0
    a, b = metrics(full), metrics(killed)
    assert [m["step"] for m in b] == list(range(1, steps + 1))
    for x, y in zip(a, b):
        for key in keys:
            assert x[key] == y[key], (x["step"], key, x[key], y[key])


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """The tiny CPU demo with a short warm start (20 steps, 200 prompts), prepared once per test session: for
    tests of the trainer's mechanics, not of learning."""
    return build_tiny_demo(tmp_path_factory.mktemp("tiny_demo"), "--num-tasks", "200", "--warm-steps", "20")


@pytest.fixture(scope="session")
def learning_demo(tmp_path_factory) -> Path:
    """The tiny CPU demo exactly as `bash examples/grpo/grpo_trainer_tiny.sh` prepares it (the 1,000-step warm
    start, ~1 min), once per test session: for the slow tests that check the policy learns the task."""
    return build_tiny_demo(tmp_path_factory.mktemp("learning_demo"), timeout=1200)
