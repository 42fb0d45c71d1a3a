"""metrics.jsonl, resume truncation, the plot CLI, and SwanLab/TensorBoard in offline mode."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

from mindrl.plot import main as plot_main
from mindrl.plot import moving_average
from mindrl.trainer.tracking import Tracker, read_metrics


def test_metrics_are_appended_and_cleaned(tmp_path):
    t = Tracker(tmp_path)
    t.log(1, {"reward/mean": 0.5, "kl": float("nan")})
    t.log(2, {"reward/mean": 0.75, "kl": 0.01})
    t.close()
    rows = read_metrics(tmp_path)
    assert rows == [{"step": 1, "reward/mean": 0.5, "kl": None}, {"step": 2, "reward/mean": 0.75, "kl": 0.01}]


def test_resume_cuts_back_to_the_checkpoint_step(tmp_path):
    t = Tracker(tmp_path)
    for step in range(1, 6):
        t.log(step, {"reward/mean": step / 10})
    t.log_samples(4, [{"completion": "x"}])
    t.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "rew')  # torn line from a killed run
    t = Tracker(tmp_path, resume_step=3)
    t.log(4, {"reward/mean": 0.99})
    t.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]
    assert read_metrics(tmp_path)[-1]["reward/mean"] == 0.99
    assert (tmp_path / "completion_samples.jsonl").read_text() == ""


def test_moving_average():
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]


def test_plot_writes_png(tmp_path, capsys):
    t = Tracker(tmp_path)
    for step in range(1, 21):
        t.log(step, {"reward/mean": step / 20, "reward/format/mean": 0.5, "accuracy": 0.1,
                     "response_length/mean": 30 - step, "kl": math.sqrt(step) / 100})
    t.close()
    assert plot_main([str(tmp_path)]) == 0
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plot_missing_dir_is_a_clear_error(tmp_path, capsys):
    assert plot_main([str(tmp_path / "nope")]) == 2
    assert "metrics.jsonl not found" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_events_written(tmp_path):
    t = Tracker(tmp_path, use_tensorboard=True)
    t.log(1, {"reward/mean": 0.5})
    t.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.skipif(importlib.util.find_spec("swanlab") is None, reason="swanlab not installed")
def test_swanlab_offline_needs_no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("SWANLAB_MODE", "offline")
    t = Tracker(tmp_path, use_swanlab=True, config={"a": 1})
    t.log(1, {"reward/mean": 0.5})
    t.close()
    assert any((tmp_path / "swanlog").rglob("*")), "swanlab wrote nothing under output_dir/swanlog"
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["reward/mean"] == 0.5
