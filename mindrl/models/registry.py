"""Model architectures: HF `model_type` -> function mapping an HF config to megatron arguments.

Adding an architecture is one file with a `to_megatron(hf) -> MegatronArgs` and one line here.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping

from mindrl.models import deepseek_v3, llama, qwen2
from mindrl.models.args import MegatronArgs

ARCHITECTURES: dict[str, Callable[..., MegatronArgs]] = {
    "qwen2": qwen2.to_megatron,
    "llama": llama.to_megatron,
    "deepseek_v3": deepseek_v3.to_megatron,
}


def architecture_for(hf: Mapping[str, Any]) -> Callable[..., MegatronArgs]:
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        close = difflib.get_close_matches(str(model_type), ARCHITECTURES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"model_type {model_type!r} is not supported{hint}; "
                         f"supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]
