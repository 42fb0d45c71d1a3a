"""A base model + a LoRA adapter in megatron at TP=1 or 2: logits, the adapters exported back to a
peft folder, and the merged HF tensors the weight push sends. Driven by test_lora_peft.py.

    python tests/checkpoint/lora_worker.py --job JOB.json --nproc N --out DIR

JOB: {"base": HF dir or megatron checkpoint, "adapter": peft folder or LoRA checkpoint root, "tp": T,
"dtype": "fp32"}. Rank 0 writes DIR/result.pt (logits [BATCH, SEQ, vocab], merged HF tensors) and
DIR/export/ (the live adapters written with write_peft_adapter).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.checkpoint.logits_worker import prompt  # noqa: E402
from tests.tp_worker import spawn_job  # noqa: E402


def rank_main(job: dict) -> None:
    warnings.filterwarnings("ignore")
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from mindrl.backends import get_backend
    from mindrl.backends.distributed import destroy_distributed
    from mindrl.checkpoint.convert import LAYOUT_FILE
    from mindrl.checkpoint.live import iter_hf_buckets, load_megatron_checkpoint
    from mindrl.checkpoint.lora_io import read_adapter, write_peft_adapter
    from mindrl.eval.runner import load_hf_weights
    from mindrl.models import ParallelLayout, load_hf_config
    from mindrl.models.lora import gather_canonical_adapters, load_adapters
    from mindrl.workers.bringup import PolicySpec, build_policy
    from mindrl.workers.megatron_engine import forward_backward, gpt_forward

    base = Path(job["base"])
    megatron = (base / LAYOUT_FILE).is_file()
    hf = dict(load_hf_config(base / "hf" if megatron else base))
    spec, adapters = read_adapter(job["adapter"], hf)
    model = build_policy(PolicySpec(hf, ParallelLayout(tp=job.get("tp", 1)), dtype=job.get("dtype", "fp32"), lora=spec,
                                    make_vocab_size_divisible_by=job.get("divisible_by", 128)),
                         get_backend("cpu"), train=False)
    if megatron:
        load_megatron_checkpoint(model.unwrapped, base)
    else:
        load_hf_weights(model.unwrapped, str(base), hf)
    load_adapters(model.unwrapped, adapters)
    vocab = model.plan.vocab_size

    def forward(chunk, batch):
        output = gpt_forward(chunk, batch)
        return output, lambda lg: (lg.sum() * 0, {"logits": gather_from_tensor_model_parallel_region(lg)[..., :vocab]
                                                  .float().detach().clone()})
    with torch.no_grad():
        reported = forward_backward(model, [{"tokens": prompt(vocab)}], forward, forward_only=True)
    live, scaling = gather_canonical_adapters(model.unwrapped)
    merged = {name: t.clone() for bucket in iter_hf_buckets(model.unwrapped, hf, bucket_bytes=64 * 1024)
              for name, t in bucket}
    if torch.distributed.get_rank() == 0:
        write_peft_adapter(Path(job["out"]) / "export", spec, live, hf)
        torch.save({"logits": reported[0]["logits"], "merged": merged, "scaling": scaling}, Path(job["out"]) / "result.pt")
    destroy_distributed()


if __name__ == "__main__":
    spawn_job(rank_main)
