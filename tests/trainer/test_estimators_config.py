"""validate() and the RL algorithm keys: every unknown name and bad combination gets one clear line,
and every shipped recipe's algorithm section validates."""
from __future__ import annotations

import pytest

from mindrl.algorithms import ADVANTAGE_ESTIMATORS, POLICY_LOSSES
from mindrl.config import config_from_dict, load_config, validate
from tests.config.test_config import base


def rl_errors(**rl) -> list[str]:
    return validate(config_from_dict(base(**{f"rl_config__{k}": v for k, v in rl.items()})), check_paths=False)


@pytest.mark.parametrize("estimator", sorted(ADVANTAGE_ESTIMATORS))
def test_every_registered_estimator_is_accepted(estimator):
    assert rl_errors(adv_estimator=estimator) == []


@pytest.mark.parametrize("loss", sorted(POLICY_LOSSES))
def test_every_registered_policy_loss_is_accepted(loss):
    agg = "seq-mean-token-mean" if loss == "gspo" else "token-mean"
    assert rl_errors(policy_loss=loss, loss_agg_mode=agg) == []


@pytest.mark.parametrize("changes, line", [
    ({"adv_estimator": "gae"},
     "rl_config.adv_estimator: unknown value 'gae'; expected one of dr_grpo, group_norm, grpo, grpo_passk"),
    ({"policy_loss": "ppo2"}, "rl_config.policy_loss: unknown value 'ppo2'; expected one of cispo, gspo, vanilla"),
    ({"loss_agg_mode": "mean"}, "rl_config.loss_agg_mode: unknown value 'mean'"),
    ({"kl_penalty": "k4"}, "rl_config.kl_penalty: unknown value 'k4'"),
    ({"adv_estimator": "rloo", "n_samples_per_prompt": 1},
     "n_samples_per_prompt=1: GRPO compares samples within a group and needs at least 2 (adv_estimator=rloo"),
    ({"policy_loss": "gspo"}, "policy_loss=gspo optimises a per-sequence ratio and needs loss_agg_mode="),
    ({"policy_loss": "cispo", "clip_ratio_c": 3.0}, "clip_ratio_c: dual-clip exists only for policy_loss=vanilla"),
    ({"clip_ratio_c": 0.5}, "rl_config.clip_ratio_c=0.5 must be > 1"),
    ({"use_kl_in_reward": True}, "use_kl_loss and use_kl_in_reward are both true"),
    ({"use_kl_in_reward": True, "use_kl_loss": False, "kl_coef": 0.0}, "use_kl_in_reward needs kl_coef > 0"),
    ({"kl_ctrl": {"type": "adaptive"}}, "kl_ctrl.type=adaptive steers the in-reward KL penalty"),
    ({"kl_ctrl": {"type": "pid"}}, "rl_config.kl_ctrl.type: unknown value 'pid'"),
    ({"filter_groups": {"enable": True, "metric": "acc"}},
     "rl_config.filter_groups.metric: unknown value 'acc'; expected 'reward' or one of rl_config.verifier_function"),
    ({"filter_groups": {"enable": True, "max_num_gen_batches": 0}}, "max_num_gen_batches=0 must be >= 1"),
    ({"adv_estimator": "rloo", "adv_estimator_options": {"epsilon": 1e-3}},
     "rl_config.adv_estimator_options.epsilon: adv_estimator=rloo does not accept option 'epsilon' (its options: "
     "none)"),
    ({"adv_estimator": "grpo_passk", "adv_estimator_options": {"norm_adv_by_std_in_grpo": False}},
     "rl_config.adv_estimator_options.norm_adv_by_std_in_grpo: adv_estimator=grpo_passk does not accept option "
     "'norm_adv_by_std_in_grpo' (its options: epsilon, std_unbiased)"),
    ({"adv_estimator": "grpo", "adv_estimator_options": {"gamma": 0.9}},
     "adv_estimator=grpo does not accept option 'gamma'"),
    ({"adv_estimator": "reinforce_plus_plus", "adv_estimator_options": {"gamma": 1.5}},
     "rl_config.adv_estimator_options.gamma=1.5 must be a number in (0, 1]"),
    ({"rollout_is": {"enable": True, "threshold": 0.0}}, "rl_config.rollout_is.threshold=0.0 must be > 0"),
    ({"rollout_is": {"level": "geometric"}}, "rl_config.rollout_is.level: unknown value 'geometric'"),
    ({"verifier_function": ["acc", "overlong"], "verifier_weight": [1.0, 1.0],
      "verifier_options": {"overlong": {"max_length": 4096, "buffer": 512}}},
     "verifier_options.overlong.max_length=4096 exceeds generate_config.sampling_config.max_tokens=1024"),
])
def test_bad_algorithm_keys_get_one_line_each(changes, line):
    errors = rl_errors(**changes)
    assert len(errors) == 1 and line in errors[0], errors


def test_norm_adv_by_std_is_gone_dr_grpo_says_it():
    with pytest.raises(Exception, match="norm_adv_by_std: unknown key"):
        config_from_dict(base(rl_config__norm_adv_by_std=False))


def test_adaptive_kl_in_reward_and_dynamic_sampling_on_a_scorer_validate():
    assert rl_errors(use_kl_loss=False, use_kl_in_reward=True, kl_ctrl={"type": "adaptive", "target_kl": 0.05},
                     verifier_function=["acc"], filter_groups={"enable": True, "metric": "acc"}) == []


def test_dapo_recipe_validates():
    cfg = load_config("grpo_qwen25_7b_dapo")
    rl = cfg.rl_config
    assert validate(cfg, check_paths=False) == []
    assert (rl.clip_ratio_low, rl.clip_ratio_high, rl.loss_agg_mode) == (0.2, 0.28, "token-mean")
    assert rl.filter_groups.enable and not rl.use_kl_loss and not rl.use_kl_in_reward and rl.kl_coef == 0.0
    assert "overlong" in rl.verifier_function


def test_estimator_options_it_takes_validate():
    assert rl_errors(adv_estimator="reinforce_plus_plus", adv_estimator_options={"gamma": 0.99}) == []
    assert rl_errors(adv_estimator="group_norm", adv_estimator_options={"std_unbiased": False, "epsilon": 1e-4}) == []
