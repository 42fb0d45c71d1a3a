"""The GRPO trainer, run on every rank (SPMD): `train.setup` builds the run (policy and reference
through `workers.bringup`, rollout engine, data, scorers, tracker; resumes from the last
checkpoint), `train.train` loops over steps, and `grpo.grpo_step` is one step read top to bottom
(rollout, rewards, advantages, reference and old log-probs, policy updates, metrics).
`checkpointing` writes and reads training checkpoints; `tracking` the metrics.
May import any mindrl subsystem except cli and eval.
"""
