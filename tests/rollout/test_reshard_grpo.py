"""GRPO through a rollout layout other than training: train TP2, rollout TP1 (two replicas, weights
pushed after every update) against the same run with shared weights (rollout TP2 = training).
Step 1 has ratio 1 and KL 0; the rewards of all three steps are the shared run's (the samples are
keyed by (prompt, sample), not by replica, and the pushed weights are the actor's exactly). Every
resharded step logs its push (time/weight_push, throughput/weight_push_gb_per_s); the shared run none."""
from __future__ import annotations

import pytest

from tests.trainer.test_grpo_e2e import metrics, run, train_cmd

pytestmark = [pytest.mark.megatron, pytest.mark.slow]


def test_grpo_train_tp2_rollout_tp1_matches_shared_weights(tiny_demo, tmp_path):
    common = ("megatron_training.train_iters=3", "rl_config.actor_resource.num_npus=2",
              "actor_config.tensor_model_parallel_size=2", "megatron_training.save_interval=0")
    shared = run(train_cmd(tiny_demo, tmp_path / "shared", *common))
    assert shared.returncode == 0, shared.stderr[-4000:]
    resharded = run(train_cmd(tiny_demo, tmp_path / "tp1", *common, "generate_config.infer_tensor_parallel_size=1"))
    assert resharded.returncode == 0, resharded.stderr[-4000:]
    a, b = metrics(tmp_path / "shared"), metrics(tmp_path / "tp1")
    assert [m["step"] for m in b] == [1, 2, 3]
    first = b[0]
    assert first["actor/pg_clipfrac"] == 0.0 and abs(first["actor/ppo_kl"]) <= 1e-6
    assert abs(first["actor/kl_loss"]) <= 1e-6 and abs(first["kl"]) < 1e-6
    for x, y in zip(a, b):
        assert "time/weight_push" not in x and "throughput/weight_push_gb_per_s" not in x  # nothing pushed
        assert 0 < y["time/weight_push"] <= y["time/rollout"] and y["throughput/weight_push_gb_per_s"] > 0
        assert x["reward/mean"] == y["reward/mean"], (x["step"], x["reward/mean"], y["reward/mean"])
        assert x["response_length/mean"] == y["response_length/mean"], x["step"]
