"""The GRPO trainer end to end on the tiny CPU demo: first-step gates, layouts, resume, bad input.

A module fixture prepares the demo once (character tokenizer, prompt set, a short warm start
saved as HF and converted to megatron with tools/convert_ckpt.py); each test runs
`python -m mindrl.cli.train_grpo` in a subprocess, as a user would.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import assert_sigkill_rerun_matches, demo_train_cmd, metrics, run_cli

pytestmark = pytest.mark.megatron


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return run_cli(cmd, timeout)


@pytest.fixture(scope="module")
def demo(tiny_demo: Path) -> Path:
    return tiny_demo  # prepared once per session in tests/conftest.py


def train_cmd(demo: Path, out: Path, *overrides: str) -> list[str]:
    """The demo recipe, shrunk for mechanics tests: 4 prompts x 4 samples, 24 new tokens, one rank."""
    return demo_train_cmd(demo, out, "megatron_training.global_batch_size=4", "rl_config.n_samples_per_prompt=4",
                          "actor_config.micro_batch_size=8", "rl_config.actor_resource.num_npus=1",
                          "generate_config.sampling_config.max_tokens=24", "megatron_training.save_interval=2",
                          *overrides)


@pytest.fixture(scope="module")
def first_run(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run1")
    proc = run(train_cmd(demo, out, "megatron_training.train_iters=2"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


def test_first_step_rollout_log_probs_are_the_policys(first_run):
    step1 = metrics(first_run)[0]
    assert step1["step"] == 1
    # The rollout engine's log-probs (the built-in engine decoding token by token from a KV cache, sharing the
    # actor's weights) against the training forward's on the same sampled tokens, measured before the update:
    # equal up to rounding. A rollout that differs (a bf16 copy) gives ~6e-3 here and fails this:
    # tests/trainer/test_estimators_e2e.py::test_tis_truncates_with_a_bf16_rollout_copy.
    assert step1["rollout/logprob_diff_mean"] < 1e-5 and step1["rollout/logprob_diff_max"] < 1e-4, step1
    # `kl` uses the rollout's log-probs as the policy's (one update per rollout), against the reference (the
    # initial policy, computed by the reference model's own forward): 0 at step 1 only if the two agree.
    assert step1["actor/kl_loss"] == 0.0 and abs(step1["kl"]) < 1e-6
    for key in ("reward/mean", "reward/format/mean", "reward/acc/mean", "accuracy", "response_length/mean",
                "response_length/max", "response_length/clip_ratio", "actor/entropy", "actor/grad_norm", "actor/lr",
                "time/rollout", "time/update", "throughput/tokens_per_s", "perf/tflop", "perf/mfu"):
        assert key in step1, key


def test_outputs_written(first_run):
    assert [m["step"] for m in metrics(first_run)] == [1, 2]
    ckpts = first_run / "checkpoints"
    assert (ckpts / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert (ckpts / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt").is_file()
    assert not list(ckpts.glob("*.tmp"))
    samples = [json.loads(x) for x in (first_run / "completion_samples.jsonl").read_text().splitlines()]
    assert samples and {"prompt", "completion", "reward", "step"} <= set(samples[0])


def test_training_checkpoint_converts_back_to_hf(first_run, tmp_path):
    """The trainer's checkpoints are megatron checkpoints: tools/convert_ckpt.py turns them into HF."""
    out = tmp_path / "hf"
    proc = run([sys.executable, "tools/convert_ckpt.py", "--model-type-hf", "qwen2", "--load-model-type", "mg",
                "--save-model-type", "hf", "--load-dir", str(first_run / "checkpoints"), "--save-dir", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    tensors = load_file(out / "model.safetensors")
    assert "model.embed_tokens.weight" in tensors and "lm_head.weight" not in tensors  # tied embeddings
    state = torch.load(first_run / "checkpoints" / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt",
                       weights_only=False)
    assert torch.equal(tensors["model.embed_tokens.weight"], state["model"]["embedding.word_embeddings.weight"][:64])
    assert AutoTokenizer.from_pretrained(out).decode([3, 4]) == "01"


def test_rerun_resumes_and_matches_an_uninterrupted_run(demo, first_run, tmp_path):
    """Rerunning with more steps resumes at step 2; steps 1-3 equal a fresh 3-step run exactly."""
    resumed = run(train_cmd(demo, first_run, "megatron_training.train_iters=3"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    fresh_dir = tmp_path / "fresh"
    fresh = run(train_cmd(demo, fresh_dir, "megatron_training.train_iters=3"))
    assert fresh.returncode == 0, fresh.stderr[-4000:]
    a, b = metrics(first_run), metrics(fresh_dir)
    assert [m["step"] for m in a] == [1, 2, 3]
    for x, y in zip(a, b):
        for key in ("reward/mean", "actor/pg_loss", "response_length/mean", "kl", "actor/grad_norm"):
            assert x[key] == y[key], (x["step"], key, x[key], y[key])


def test_checkpoint_of_another_layout_is_refused(demo, first_run):
    proc = run(train_cmd(demo, first_run, "megatron_training.train_iters=5", "rl_config.actor_resource.num_npus=2",
                         "actor_config.tensor_model_parallel_size=2"))
    assert proc.returncode != 0
    assert "was written with" in proc.stderr and "layout" in proc.stderr


@pytest.mark.parametrize("layout", ["actor_config.tensor_model_parallel_size=2",
                                    "actor_config.pipeline_model_parallel_size=2"], ids=["tp2", "pp2"])
def test_first_step_at_tp2_and_pp2_equals_single_rank(demo, first_run, tmp_path, layout):
    proc = run(train_cmd(demo, tmp_path, "megatron_training.train_iters=1", "rl_config.actor_resource.num_npus=2",
                         layout, f"actor_config.save={tmp_path / 'ckpt'}"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    # actor_config.save is the checkpoint directory (MindSpeed-RL's meaning), instead of <output_dir>/checkpoints.
    assert (tmp_path / "ckpt" / "iter_0000001" / "trainer_state.json").is_file()
    assert not (tmp_path / "checkpoints").exists()
    single, tp2 = metrics(first_run)[0], metrics(tmp_path)[0]
    assert single["reward/mean"] == tp2["reward/mean"]  # the same completions were sampled
    assert abs(single["actor/pg_loss"] - tp2["actor/pg_loss"]) <= 1e-5
    assert abs(single["actor/entropy"] - tp2["actor/entropy"]) <= 1e-5


def test_bad_config_fails_before_starting(demo, tmp_path):
    proc = run(train_cmd(demo, tmp_path, "rl_config.n_samples_per_prompt=1", "megatron_training.data_path=/nope"))
    assert proc.returncode == 2
    assert "n_samples_per_prompt=1" in proc.stderr and "megatron_training.data_path: path '/nope' does not exist" in proc.stderr


def test_two_epochs_over_minibatches_with_data_parallelism(demo, tmp_path):
    """More than one update per rollout: old log-probs are computed, the ratio moves off 1."""
    proc = run(train_cmd(demo, tmp_path, "megatron_training.train_iters=1", "rl_config.actor_resource.num_npus=2",
                         "rl_config.epochs=2", "rl_config.mini_batch_size=2", "actor_config.micro_batch_size=4",
                         "rl_config.entropy_coeff=0.01",  # a gradient even if every reward is equal
                         "megatron_training.save_interval=0"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    step = metrics(tmp_path)[0]
    assert step["time/old_log_probs"] > 0 and step["actor/ppo_kl"] != 0.0  # later updates see a moved policy
    # measured by the old-log-prob forward here, over both DP ranks' tokens: the shared engine's are the policy's
    assert step["rollout/logprob_diff_mean"] < 1e-5 and step["rollout/logprob_diff_max"] < 1e-4, step
    assert 0.0 <= step["reward/flat_group_fraction"] <= 1.0


def test_prompt_longer_than_max_prompt_length_is_a_clear_error(demo, tmp_path):
    proc = run(train_cmd(demo, tmp_path, "megatron_training.train_iters=1", "rl_config.max_prompt_length=5"))
    assert proc.returncode != 0
    assert "tokens > rl_config.max_prompt_length=5" in proc.stderr


def test_non_finite_loss_skips_steps_then_stops(demo, tmp_path):
    """An infinite learning rate turns the weights to NaN: later steps are skipped and counted, then it stops."""
    proc = run(train_cmd(demo, tmp_path, "megatron_training.train_iters=6", "actor_config.lr=inf",
                         "actor_config.clip_grad=0.0", "rl_config.max_bad_steps_in_a_row=2",
                         "megatron_training.save_interval=0"))
    assert proc.returncode != 0
    assert "non-finite loss 2 steps in a row" in proc.stderr
    rows = metrics(tmp_path)
    assert rows[0].get("bad_step") is None and [r.get("bad_step") for r in rows[-2:]] == [1.0, 1.0]


@pytest.mark.slow
def test_sigkill_and_rerun_reproduces_every_step(demo, tmp_path):
    """Kill -9 mid-run, rerun the same command: every step equals an uninterrupted run."""
    assert_sigkill_rerun_matches(lambda out: train_cmd(demo, out, "megatron_training.train_iters=6"), tmp_path, 6,
                                 ("reward/mean", "actor/pg_loss", "response_length/mean", "kl"))
