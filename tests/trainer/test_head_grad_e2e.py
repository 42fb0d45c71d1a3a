"""`actor_config.head_grad_in_forward` through the trainer on the tiny CPU demo: the first step with the output
layer's gradient computed in its forward (the default) equals the step with the log-probs' own backward
(`false`) within fp32 rounding, for the GRPO loss with an entropy bonus and KL (token-separable: the per-block
gradients are used) and for GSPO (a per-sequence ratio: detected and recomputed). The rollout is the same in
both (step 1 samples from the same weights), so the same tokens are scored. The reward is DAPO's overlong
penalty over almost the whole response (the tiny demo's 20-step warm start earns no other reward yet): it
varies with the response's length, so the advantages are not all 0."""
from __future__ import annotations

import pytest

from tests.trainer.test_compile_e2e import _train

pytestmark = [pytest.mark.megatron]
REWARD = ("rl_config.verifier_function=[format,overlong]",
          "+rl_config.verifier_options.overlong={max_length:24,buffer:23}")


@pytest.mark.parametrize("loss", [
    pytest.param(("rl_config.entropy_coeff=0.01",), id="grpo_entropy_bonus"),
    # the fallback is in the default suite at the op level (tests/models/test_fused_loss.py)
    pytest.param(("rl_config.policy_loss=gspo", "rl_config.loss_agg_mode=seq-mean-token-mean"), id="gspo",
                 marks=pytest.mark.slow)])
def test_first_step_equals_the_logprob_backward(tiny_demo, tmp_path, loss):
    fused = _train(tiny_demo, tmp_path / "fused", "megatron_training.train_iters=1", *REWARD, *loss)
    plain = _train(tiny_demo, tmp_path / "plain", "megatron_training.train_iters=1",
                   "actor_config.head_grad_in_forward=false", *REWARD, *loss)
    assert fused[0]["response_length/mean"] == plain[0]["response_length/mean"]  # the same samples
    assert fused[0]["reward/std"] > 0
    for key in ("actor/pg_loss", "kl", "actor/grad_norm", "actor/entropy", "actor/kl_loss"):
        assert abs(fused[0][key] - plain[0][key]) <= 1e-5 * max(1.0, abs(plain[0][key])), \
            (key, fused[0][key], plain[0][key])
    assert fused[0]["actor/grad_norm"] > 0
