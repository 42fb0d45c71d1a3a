"""Workers compose models, algorithms and rewards on a rank: the megatron training engine
(`megatron_engine`: model + DDP + optimizer + pipeline schedule), and later the actor, reference
and rollout workers the trainer drives. May import: torch, megatron-core, mindrl.backends,
mindrl.models, mindrl.algorithms, mindrl.rewards, mindrl.data, mindrl.checkpoint.
"""
