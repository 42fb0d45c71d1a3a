"""Tiny random HF checkpoints (built with transformers from scaled-down real configs) for the tests."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL_DIRS = {"qwen2": "Qwen2.5-0.5B", "llama": "Llama-3.2-1B", "deepseek_v3": "DeepSeek-V3"}
CLASSES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM"}
VOCAB = 1003  # not a multiple of 128: TP padding is exercised


def tiny_config(shared_models: Path, arch: str, num_layers: int = 4) -> dict:
    from mindrl.models import load_hf_config, scale_down

    cfg = scale_down(load_hf_config(shared_models / MODEL_DIRS[arch]), num_layers=num_layers, num_heads=4,
                     num_kv_heads=2, vocab_size=VOCAB, first_k_dense=1)
    cfg.update(bos_token_id=1, eos_token_id=2)  # inside the tiny vocab
    return cfg


def make_hf_model(shared_models: Path, arch: str, out: Path, dtype: str = "float32", num_layers: int = 4,
                  seed: int = 0) -> Path:
    """save_pretrained of a randomly initialised tiny model (random norms and biases too)."""
    import torch
    import transformers

    cfg = tiny_config(shared_models, arch, num_layers)
    config = transformers.AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    torch.manual_seed(seed)
    model = getattr(transformers, CLASSES[arch])(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn_like(b) * 0.01)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(out)
    return out
