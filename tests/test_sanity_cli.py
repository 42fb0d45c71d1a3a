"""The install check runs on a fresh checkout (no demo files needed) and its model learns."""
from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.megatron


def test_sanity_run_passes_at_tp2(tmp_path):
    proc = run_cli([sys.executable, "-m", "mindrl.cli.sanity", f"megatron_training.output_dir={tmp_path}",
                    "megatron_training.tokenizer_name_or_path=/nonexistent", "megatron_training.data_path=/nonexistent"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "TP=2" in proc.stdout and "PASS" in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "sanity_metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    # starting near ln(64) for a random model, and learning the count-up pattern
    assert 3.5 < rows[0]["loss"] < 5.0 and rows[-1]["loss"] < 0.7 * rows[0]["loss"]
