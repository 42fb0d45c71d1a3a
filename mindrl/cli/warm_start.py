"""A short supervised warm start on one rank, saved as a Hugging Face checkpoint.

Used by the tiny demo (`prepare_tiny_demo`): it teaches a random model the shape of the answers
before GRPO. The output is an ordinary HF directory (config.json + model.safetensors + tokenizer),
which `tools/convert_ckpt.py` turns into the training layout, exactly as a user's real model.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Callable


def warm_start(config_name: str, overrides: list[str], tasks: list[dict], completion_fn: Callable[[dict, random.Random], str],
               out_dir: Path, *, steps: int, seed: int, batch: int = 32, lr: float = 3e-3) -> Path:
    warnings.filterwarnings("ignore")
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed
    from mindrl.checkpoint.live import iter_hf_buckets
    from mindrl.config import load_config, resolve_hf_config
    from mindrl.workers.bringup import PolicySpec, build_policy
    from mindrl.workers.megatron_engine import OptimConfig, forward_backward, next_token_loss_forward

    cfg = load_config(config_name, overrides)
    tokenizer = AutoTokenizer.from_pretrained(cfg.megatron_training.tokenizer_name_or_path)
    hf = resolve_hf_config(cfg)
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    backend = get_backend(cfg.backend)
    model = build_policy(PolicySpec(hf, dtype="fp32", make_vocab_size_divisible_by=cfg.model.make_vocab_size_divisible_by,
                                    seed=seed), backend, optim=OptimConfig(lr=lr, clip_grad=1.0))
    plan = model.plan
    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    for step in range(steps):
        # Cosine decay to 0: the last steps settle the copy of the operands, so that the policy GRPO
        # starts from writes its scratchpad reliably and varies only where the data vary (the answer).
        for group in model.optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        rows = [tasks[rng.randrange(len(tasks))] for _ in range(batch)]
        seqs, masks = [], []
        for row in rows:
            prompt = tokenizer.encode(row["question"], add_special_tokens=False)
            answer = tokenizer.encode(completion_fn(row, rng), add_special_tokens=False) + [eos]
            seqs.append(prompt + answer)
            masks.append([0] * (len(prompt) - 1) + [1] * len(answer))
        length = max(len(s) for s in seqs)
        tokens = torch.tensor([s + [tokenizer.pad_token_id] * (length - len(s)) for s in seqs])
        loss_mask = torch.tensor([m + [0] * (length - 1 - len(m)) for m in masks], dtype=torch.float32)

        reported = forward_backward(model, [{"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": loss_mask}],
                                    next_token_loss_forward(plan.vocab_size))
        model.optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"[warm start] step {step + 1}/{steps} loss {reported[0]['loss'].item():.3f}", flush=True)
    tensors = {name: t.contiguous() for bucket in iter_hf_buckets(model.unwrapped, plan.hf) for name, t in bucket}
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    hf_cfg = dict(plan.hf, architectures=["Qwen2ForCausalLM"] if plan.hf["model_type"] == "qwen2" else plan.hf.get(
        "architectures"), eos_token_id=eos, bos_token_id=eos, torch_dtype="float32")
    (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    destroy_distributed()
    return out_dir
