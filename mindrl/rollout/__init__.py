"""Rollout engines behind one interface: the built-in megatron-core engine (every backend) and
vLLM / vllm-ascend adapters where installed. Not built yet: see the GRPO-loop issue.
May import: torch, megatron-core, mindrl.backends, mindrl.models, mindrl.checkpoint.
"""
