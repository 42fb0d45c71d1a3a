"""The GRPO trainer: one step read top to bottom (rollout, rewards, advantages, reference and old
log-probs, policy updates, metrics, checkpoints), orchestrating workers (with Ray across nodes).
Not built yet: see the GRPO-loop issue. May import any mindrl subsystem except cli.
"""
