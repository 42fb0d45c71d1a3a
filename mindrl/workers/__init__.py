"""Workers compose models, algorithms and rewards on a rank.

Owns: `bringup` (`build_policy`: the one model bring-up, plan -> process groups -> chunks, used by
every program that builds a policy; `PolicySpec.from_config`, `optim_config`), `megatron_engine`
(megatron DDP, optimizer and LR schedule, pipeline-schedule forward/backward) and `actor`
(`PolicyWorker`: log-probs of given sequences and GRPO policy updates; the reference policy is a
frozen one). May import: torch, megatron-core, mindrl.backends, mindrl.models, mindrl.algorithms,
mindrl.rewards, mindrl.data, mindrl.checkpoint, mindrl.rollout, mindrl.utils, mindrl.config.
"""
