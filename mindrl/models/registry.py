"""Model architectures: HF `model_type` -> its `Architecture` record (mindrl/models/arch.py).

Adding an architecture is one file (HF config -> megatron arguments, HF tensor names, TP splits,
ending in `ARCH = Architecture(...)`) and one line here.
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping

from mindrl.models import deepseek_v3, llama, qwen2
from mindrl.models.arch import Architecture

ARCHITECTURES: dict[str, Architecture] = {
    "qwen2": qwen2.ARCH,
    "llama": llama.ARCH,
    "deepseek_v3": deepseek_v3.ARCH,
}


def architecture_for(hf: Mapping[str, Any]) -> Architecture:
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        close = difflib.get_close_matches(str(model_type), ARCHITECTURES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"model_type {model_type!r} is not supported{hint}; "
                         f"supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]
