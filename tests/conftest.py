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


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """The tiny CPU demo, prepared once per test session: character tokenizer, prompt set, a short
    warm start saved as HF (`warm_start/`) and converted to megatron at TP=1 (`mg/`)."""
    import sys

    d = tmp_path_factory.mktemp("tiny_demo")
    proc = run_cli([sys.executable, "-m", "mindrl.cli.prepare_tiny_demo", "--out", str(d), "--num-tasks", "200",
                    "--warm-steps", "20", f"megatron_training.tokenizer_name_or_path={d / 'tokenizer'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli([sys.executable, "tools/convert_ckpt.py", "--model-type-hf", "qwen2", "--load-model-type", "hf",
                    "--save-model-type", "mg", "--load-dir", str(d / "warm_start"), "--save-dir", str(d / "mg"),
                    "--target-tensor-parallel-size", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d
