"""mindrl: GRPO post-training (DeepSeek-R1-Zero style) on megatron-core for CUDA, Ascend NPU and CPU.

Subsystems, each one folder (see docs/architecture.md for what each may import):
backends/ config/ models/ checkpoint/ data/ rewards/ rollout/ algorithms/ workers/ trainer/ cli/
"""
__version__ = "0.1.0"

import warnings as _warnings

# megatron-core announces at import time, once per module, that the optional TransformerEngine /
# Apex kernels are absent and it falls back to torch. True and expected here: keep logs concise.
_warnings.filterwarnings("ignore", message=r".*(Transformer Engine|TransformerEngine|Apex).*(not installed|is not available).*")
_warnings.filterwarnings("ignore", message=r".*Apex is not installed.*")
