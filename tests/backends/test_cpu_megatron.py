"""Each cpu-backend adaptation does what it says (in a fresh process: they are process-wide)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mindrl.backends import cpu_megatron
from mindrl.backends.distributed import free_port

SCRIPT = Path(__file__).with_name("cpu_megatron_checks.py")


def run_checks(*flags: str) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), *flags, str(free_port())], capture_output=True, text=True,
                          timeout=300, cwd=SCRIPT.parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def patched() -> dict:
    return run_checks()


@pytest.mark.parametrize("name", list(cpu_megatron.ADAPTATIONS))
def test_adaptation(patched, name):
    assert name in patched["applied"]
    assert patched[name] == "ok", patched[name]


def test_apply_is_idempotent(patched):
    assert patched["idempotent"] == "ok"


def test_megatron_needs_them_without_patch():
    results = run_checks("--unpatched")
    assert results == {"current_device": "fails", "cuda_factory": "fails", "rng_state": "fails"}
