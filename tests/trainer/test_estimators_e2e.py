"""The other estimator/loss families in the trainer, end to end on the tiny CPU demo: REINFORCE++ with the
KL penalty in the reward under the adaptive controller, CISPO with rollout importance sampling, and overlong
filtering, in one short run; the controller's beta survives a resume."""
from __future__ import annotations

import json
import math

import pytest

from tests.conftest import run_cli
from tests.trainer.test_dapo_e2e import metrics, train_cmd

pytestmark = pytest.mark.megatron

FAMILIES = ["rl_config.adv_estimator=reinforce_plus_plus", "rl_config.use_kl_loss=false",
            "rl_config.use_kl_in_reward=true", "rl_config.kl_coef=0.05", "rl_config.kl_ctrl.type=adaptive",
            "rl_config.kl_ctrl.target_kl=0.001", "rl_config.kl_ctrl.horizon=32", "rl_config.policy_loss=cispo",
            "rl_config.rollout_is.enable=true", "rl_config.overlong_filter=true", "rl_config.epochs=2",
            "rl_config.entropy_coeff=0.01"]  # a gradient even if every reward is equal (the first KL is 0)


def test_reinforce_pp_kl_in_reward_cispo_rollout_is(tiny_demo, tmp_path):
    proc = run_cli(train_cmd(tiny_demo, tmp_path, "megatron_training.train_iters=1", *FAMILIES))
    assert proc.returncode == 0, proc.stderr[-4000:]
    step = metrics(tmp_path)[0]
    # the adaptive controller moved beta from 0.05: the first update's KL is 0 (< target), so it shrinks by
    # the clipped 20% times n_samples / horizon = 16 / 32
    assert step["kl_ctrl/beta"] == pytest.approx(0.05 * (1 - 0.2 * 16 / 32))
    # the built-in engine samples from the trained model itself: the rollout IS weights are 1 up to rounding,
    # and so is the log-prob distance measured by the old-log-prob forward (epochs=2 runs one); a rollout that
    # differs is test_tis_truncates_with_a_bf16_rollout_copy below
    assert step["actor/rollout_is_mean"] == pytest.approx(1.0, abs=1e-3)
    assert step["actor/rollout_is_clipfrac"] == 0.0
    assert step["rollout/logprob_diff_mean"] < 1e-5 and step["rollout/logprob_diff_max"] < 1e-4
    assert step["actor/ppo_kl"] != 0.0  # the second epoch sees a moved policy
    state = json.loads((tmp_path / "checkpoints" / "iter_0000001" / "trainer_state.json").read_text())
    assert state["kl_coef"] == pytest.approx(step["kl_ctrl/beta"])
    resumed = run_cli(train_cmd(tiny_demo, tmp_path, "megatron_training.train_iters=2", *FAMILIES))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    second = metrics(tmp_path)[1]
    assert second["step"] == 2 and second["kl_ctrl/beta"] != step["kl_ctrl/beta"]  # went on from the saved beta


# A rollout copy in bf16 against fp32 training (generate_config.dtype): its log-probs differ by ~1e-2. The reward
# is the overlong length penalty, which varies with the response length, so the advantages (and with them the
# policy loss that the IS weights multiply) are not all 0 after the short warm start.
BF16_TIS = ["megatron_training.train_iters=1", "megatron_training.save_interval=0", "generate_config.dtype=bfloat16",
            "rl_config.use_kl_loss=false", "rl_config.kl_coef=0.0", "rl_config.verifier_function=[format,overlong]",
            "rl_config.verifier_weight=[0.0,1.0]", "+rl_config.verifier_options.overlong={max_length:24,buffer:20}",
            "rl_config.rollout_is.enable=true", "rl_config.rollout_is.threshold=1.01"]


def test_tis_truncates_with_a_bf16_rollout_copy(tiny_demo, tmp_path):
    """Truncated IS end to end with rollout log-probs that differ from training's: the measured distance is
    above 0 (and ~0 for the shared engine, test_grpo_e2e), some but not all token weights are truncated at
    C = 1.01, and a truncation needs a token whose log-ratio exceeds log C, which the logged max distance
    (computed apart, in rollout/logprob_diff_max) must then show."""
    proc = run_cli(train_cmd(tiny_demo, tmp_path, *BF16_TIS))
    assert proc.returncode == 0, proc.stderr[-4000:]
    step = metrics(tmp_path)[0]
    assert step["reward/std"] > 0  # the advantages are not all 0
    assert 1e-3 < step["rollout/logprob_diff_mean"] < 0.1, step["rollout/logprob_diff_mean"]
    assert step["rollout/logprob_diff_max"] > math.log(1.01) > 0
    assert 0.0 < step["actor/rollout_is_clipfrac"] < 1.0, step["actor/rollout_is_clipfrac"]
    assert step["actor/rollout_is_mean"] != 1.0 and step["actor/pg_loss"] != 0.0
    assert step["time/weight_push"] > 0  # a rollout copy, pushed to


@pytest.mark.slow
def test_logprob_diff_from_the_old_log_prob_forward_equals_the_update_forward(tiny_demo, tmp_path):
    """rollout/logprob_diff_* come from the old-log-prob forward when one runs (epochs=2) and from the update's
    forward otherwise: for the same samples (same seed, one step) the two measurements agree, and so does
    the fraction of truncated weights (computed against the old log-probs in both)."""
    runs = {}
    for epochs in (1, 2):
        out = tmp_path / f"epochs{epochs}"
        proc = run_cli(train_cmd(tiny_demo, out, *BF16_TIS, f"rl_config.epochs={epochs}"))
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[epochs] = metrics(out)[0]
    one, two = runs[1], runs[2]
    assert two["time/old_log_probs"] > 0 and one["reward/mean"] == two["reward/mean"]  # the same samples
    assert two["rollout/logprob_diff_mean"] == pytest.approx(one["rollout/logprob_diff_mean"], rel=1e-4)
    assert two["rollout/logprob_diff_max"] == pytest.approx(one["rollout/logprob_diff_max"], rel=1e-4)
    assert two["actor/rollout_is_clipfrac"] == pytest.approx(one["actor/rollout_is_clipfrac"], abs=0.02)


GRPO_KL_IN_REWARD = ["rl_config.adv_estimator=grpo", "rl_config.use_kl_loss=false", "rl_config.kl_coef=0.5",
                     "rl_config.kl_ctrl.type=fixed", "actor_config.lr=1e-2"]


# slow: three trainer runs (~65 s); the default suite keeps KL-in-reward through test_reinforce_pp_kl_in_reward_cispo_rollout_is
@pytest.mark.slow
def test_grpo_kl_in_reward_takes_the_logged_kl_off_the_reward(tiny_demo, tmp_path):
    """GRPO with the KL penalty in the reward (fixed beta 0.5). From one step-1 checkpoint, step 2 runs with and
    without the penalty: the same samples, scores and KL, but the penalty taken off the rewards the estimator
    sees is beta x the logged per-token KL summed over each response, and the update differs."""
    import shutil

    first = run_cli(train_cmd(tiny_demo, tmp_path / "kl", *GRPO_KL_IN_REWARD, "rl_config.use_kl_in_reward=true",
                              "megatron_training.train_iters=1"))
    assert first.returncode == 0, first.stderr[-4000:]
    shutil.copytree(tmp_path / "kl", tmp_path / "no_kl")
    for name, on in (("kl", "true"), ("no_kl", "false")):
        proc = run_cli(train_cmd(tiny_demo, tmp_path / name, *GRPO_KL_IN_REWARD, f"rl_config.use_kl_in_reward={on}",
                                 "megatron_training.train_iters=2"))
        assert proc.returncode == 0, proc.stderr[-4000:]
    a, b = metrics(tmp_path / "kl")[1], metrics(tmp_path / "no_kl")[1]
    assert a["step"] == b["step"] == 2
    for key in ("reward/mean", "response_length/mean", "kl"):  # the same policy sampled the same responses
        assert a[key] == b[key], key
    assert a["kl"] > 1e-4, a["kl"]  # the policy moved away from the reference in step 1
    # `kl` is the token mean over the batch, so the mean over responses of their KL sums is kl x mean length
    assert a["kl_ctrl/penalty"] == pytest.approx(0.5 * a["kl"] * a["response_length/mean"], rel=1e-4)
    assert a["kl_ctrl/beta"] == 0.5 and "kl_ctrl/penalty" not in b
    assert a["actor/grad_norm"] != pytest.approx(b["actor/grad_norm"], rel=1e-3)  # other advantages
