"""Read a Hugging Face `config.json` and normalise the fields that moved between transformers versions.

Also `scale_down()`: a tiny copy of a real config (fewer, narrower layers; same quirks: rope theta
and scaling, tied embeddings, vocab size, GQA ratio, MLA and MoE structure) for tests and demos.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping

HFConfig = dict[str, Any]


def load_hf_config(source: str | Path | Mapping[str, Any]) -> HFConfig:
    """A config dict from a model directory, a config.json path, or a dict (copied)."""
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"HF config not found: {path} (expected a model directory with config.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def require(hf: Mapping[str, Any], key: str) -> Any:
    if key not in hf or hf[key] is None:
        raise KeyError(f"HF config ({hf.get('model_type', '?')}) is missing required field '{key}'")
    return hf[key]


def rope_theta(hf: Mapping[str, Any], default: float = 10000.0) -> float:
    """transformers < 5 writes `rope_theta`; 5.x writes `rope_parameters: {rope_theta: ...}`."""
    params = hf.get("rope_parameters") or {}
    return float(hf.get("rope_theta", params.get("rope_theta", default)))


def rope_scaling(hf: Mapping[str, Any]) -> dict[str, Any] | None:
    """The rope scaling dict with its kind under `rope_type` (None for plain rope)."""
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or None
    if not scaling:
        return None
    scaling = dict(scaling)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in (None, "default"):
        return None
    scaling["rope_type"] = kind
    return scaling


def head_dim(hf: Mapping[str, Any]) -> int:
    return int(hf.get("head_dim") or require(hf, "hidden_size") // require(hf, "num_attention_heads"))


def scale_down(hf: Mapping[str, Any], *, num_layers: int = 2, hidden_size: int = 64, num_heads: int = 4,
               num_kv_heads: int | None = None, intermediate_size: int = 128, vocab_size: int | None = None,
               num_experts: int = 4, experts_per_token: int = 2, moe_intermediate_size: int = 32,
               first_k_dense: int = 1) -> HFConfig:
    """A tiny config with the architecture and quirks of `hf`.

    The GQA ratio is kept where the tiny head count allows (num_kv_heads defaults to
    num_heads * kv/heads of the real model, at least 1). MLA dims and MoE grouping are shrunk
    in proportion so DeepSeek-V3's structure (q/kv LoRA, rope/nope split, groups, shared experts,
    first-k dense layers) is all still there.
    """
    cfg = copy.deepcopy(dict(hf))
    real_heads = int(require(cfg, "num_attention_heads"))
    real_kv = int(cfg.get("num_key_value_heads") or real_heads)
    if num_kv_heads is None:
        num_kv_heads = max(1, num_heads * real_kv // real_heads)
    cfg.update(num_hidden_layers=num_layers, hidden_size=hidden_size, num_attention_heads=num_heads,
               num_key_value_heads=num_kv_heads, intermediate_size=intermediate_size)
    if "head_dim" in cfg:
        cfg["head_dim"] = hidden_size // num_heads
    if "layer_types" in cfg:
        cfg["layer_types"] = cfg["layer_types"][:1] * num_layers
    if "max_window_layers" in cfg:
        cfg["max_window_layers"] = min(int(cfg["max_window_layers"]), num_layers)
    if vocab_size is not None:
        cfg["vocab_size"] = vocab_size
    cfg.pop("quantization_config", None)  # fp8 block quantisation belongs to the real weights only
    # The architecture shrinks its own structures (DeepSeek-V3: MLA dims, experts, groups).
    from mindrl.models.registry import ARCHITECTURES  # lazily: the architecture files import this module

    arch = ARCHITECTURES.get(str(cfg.get("model_type")))
    if arch is not None and arch.scale_down is not None:
        arch.scale_down(cfg, num_layers=num_layers, num_heads=num_heads, num_experts=num_experts,
                        experts_per_token=experts_per_token, moe_intermediate_size=moe_intermediate_size,
                        first_k_dense=first_k_dense)
    return cfg
