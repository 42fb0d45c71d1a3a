"""megatron-core GPT models built from Hugging Face configs.

Owns: one record per architecture (`registry.ARCHITECTURES`: qwen2, llama, deepseek_v3; each file
holds its HF config -> megatron arguments, HF tensor-name rules and TP split rules, see `arch.py`),
the layer spec (our RMSNorm and the backend's core attention), the one plan of where each tensor
lives (`layout.py`: parallel layouts, per-rank shard specs read off a live model or computed for
every rank without processes), canonical (layout-free) state dicts and their slicing/merging
(`sharding.py`), vocab-parallel token log-probs (`logprobs.py`; its tiles' elementwise work optionally
compiled, `logprob_tiles.py`), and torch.compile of the transformer layers
for the training forwards (`compile.py`), and which head sizes vLLM-CPU's attention runs (`vllm_cpu.py`:
config/ and rollout/ both ask it).
May import: torch, megatron-core (and, lazily in vllm_cpu.py, vLLM's attention backends' head-size
lists), and nothing else from mindrl (the backend's core-attention class
is passed in by the caller, so models never ask which hardware they are on).
"""
from mindrl.models.builder import DTYPES, ModelPlan, build_model, padded_vocab_size, plan_model
from mindrl.models.hf_config import load_hf_config, scale_down
from mindrl.models.layout import ParallelLayout
from mindrl.models.arch import Architecture
from mindrl.models.registry import ARCHITECTURES, architecture_for

__all__ = ["ARCHITECTURES", "Architecture", "DTYPES", "ModelPlan", "ParallelLayout", "architecture_for", "build_model",
           "load_hf_config", "padded_vocab_size", "plan_model", "scale_down"]
