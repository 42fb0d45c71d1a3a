"""`perf/*` metrics (mindrl/trainer/perf.py): the step's model FLOPs (mindrl.models.flops, all data-parallel
ranks) over the step time, the world size and the backend's peak."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mindrl.models.flops import flop_model, step_flops
from mindrl.trainer import perf

HF = {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4, "num_key_value_heads": 2,
      "num_hidden_layers": 2, "vocab_size": 300}


def group(prompt_len: int, lens: list[int]) -> SimpleNamespace:
    return SimpleNamespace(prompt=[1] * prompt_len, outputs=[SimpleNamespace(token_ids=[2] * n) for n in lens])


@pytest.fixture
def two_dp_ranks(monkeypatch):
    """A world of 2 ranks whose other DP rank did exactly this rank's work (all-reduce = x2)."""
    monkeypatch.setattr(perf.dist, "all_reduce", lambda t, group=None: t.mul_(2))
    monkeypatch.setattr(perf.dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(perf.ps, "get_data_parallel_group", lambda: None)
    monkeypatch.setattr(perf, "_cache", {})
    monkeypatch.setenv("MINDRL_CPU_PEAK_FLOPS", "1e9")


def fake_run(reference: bool, epochs: int = 1) -> SimpleNamespace:
    plan = SimpleNamespace(hf=dict(HF), config=SimpleNamespace(params_dtype=torch.float32))
    return SimpleNamespace(actor=SimpleNamespace(model=SimpleNamespace(plan=plan)), cfg=SimpleNamespace(
        backend="cpu", rl_config=SimpleNamespace(epochs=epochs)), reference=object() if reference else None)


def test_mfu_is_model_flops_over_world_time_and_peak(two_dp_ranks):
    generated = [group(5, [3, 4]), group(7, [2, 2]), group(6, [1, 5])]
    trained = generated[1:]  # dynamic sampling dropped the first group
    seconds = {"time/rollout": 2.0, "time/reference": 0.5, "time/old_log_probs": 0.0, "time/update": 1.5,
               "time/step": 5.0}
    out = perf.perf_metrics(fake_run(reference=True, epochs=2), generated, trained, seconds, old_log_probs=True)
    parts = step_flops(flop_model(HF), [5, 7, 6], [[3, 4], [2, 2], [1, 5]], trained=[1, 2], reference=True,
                       old_log_probs=True, epochs=2)
    total = 2 * parts["total"]  # both DP ranks
    assert out["perf/tflop"] == pytest.approx(total / 1e12)
    assert out["perf/tflop_rollout"] == pytest.approx(2 * parts["rollout"] / 1e12)
    assert out["perf/tflops_per_device"] == pytest.approx(total / 2 / 5.0 / 1e12)
    assert out["perf/mfu"] == pytest.approx(total / 2 / 5.0 / 1e9)
    assert out["perf/mfu_update"] == pytest.approx(2 * parts["update"] / 2 / 1.5 / 1e9)
    assert out["perf/mfu_reference"] == pytest.approx(2 * parts["reference"] / 2 / 0.5 / 1e9)
    assert "perf/mfu_old_log_probs" not in out  # its time was 0: no rate
    assert parts["update"] == 2 * 3 * parts["reference"]


def test_no_reference_and_no_peak(two_dp_ranks, monkeypatch):
    monkeypatch.setattr(perf, "get_backend", lambda name: SimpleNamespace(peak_flops=lambda dtype: None))
    out = perf.perf_metrics(fake_run(reference=False), [group(4, [3])], [], {"time/step": 1.0}, old_log_probs=False)
    assert set(out) == {"perf/tflop", "perf/tflop_rollout", "perf/tflops_per_device"}  # no peak known: no MFU
    assert out["perf/tflop"] == pytest.approx(2 * step_flops(flop_model(HF), [4], [[3]], trained=[])["rollout"] / 1e12)
