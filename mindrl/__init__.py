"""mindrl: GRPO post-training (DeepSeek-R1-Zero style) on megatron-core for CUDA, Ascend NPU and CPU.

Subsystems, each one folder (see docs/architecture.md for what each may import):
backends/ config/ models/ checkpoint/ data/ rewards/ rollout/ algorithms/ workers/ trainer/ cli/
"""
__version__ = "0.1.0"
