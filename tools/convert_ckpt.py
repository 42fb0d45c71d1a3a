#!/usr/bin/env python
"""Convert checkpoints between Hugging Face (safetensors) and Megatron (megatron-core legacy per-rank
files) for qwen2, llama and deepseek_v3, at any TP/PP/EP/VPP layout. Streaming: one tensor in
memory at a time. See docs/convert_ckpt.md.

  hf -> mg:  python tools/convert_ckpt.py --model-type-hf qwen2 --load-model-type hf --save-model-type mg \\
                 --load-dir Qwen2.5-7B --save-dir qwen7b-tp4 --target-tensor-parallel-size 4
  mg -> hf:  python tools/convert_ckpt.py --model-type-hf qwen2 --load-model-type mg --save-model-type hf \\
                 --load-dir qwen7b-tp4 --save-dir Qwen2.5-7B-out     (the layout is read from the checkpoint)
  mg -> mg:  as hf -> mg, with --load-model-type mg (re-shards to the target layout)
  LoRA run:  python tools/convert_ckpt.py --model-type-hf qwen2 --load-model-type mg --save-model-type hf \
                 --load-dir <run>/checkpoints --save-dir adapter --lora-format peft      (an HF PEFT folder)
             ... --lora-merge [--base-dir <HF base>]                                   (merged HF weights)
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-type-hf", required=True, help="architecture: qwen2, llama or deepseek_v3")
    p.add_argument("--load-model-type", required=True, choices=["hf", "mg"], help="format of --load-dir")
    p.add_argument("--save-model-type", required=True, choices=["hf", "mg"], help="format to write")
    p.add_argument("--load-dir", required=True, help="HF model directory, or a Megatron checkpoint written by this tool")
    p.add_argument("--save-dir", required=True, help="output directory (must be empty or absent unless --overwrite)")
    p.add_argument("--target-tensor-parallel-size", type=int, default=1, help="TP of the Megatron output")
    p.add_argument("--target-pipeline-parallel-size", type=int, default=1, help="PP of the Megatron output")
    p.add_argument("--target-expert-parallel-size", type=int, default=1, help="EP of the Megatron output (MoE)")
    p.add_argument("--num-layer-list", default=None, help="uneven PP: layers per stage, e.g. 7,7,8,8,8,8,8,7")
    p.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None, help="VPP: layers per virtual stage")
    p.add_argument("--params-dtype", choices=["bf16", "fp16", "fp32"], default=None,
                   help="cast weights to this dtype (default: keep the source dtypes)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --save-dir")
    g = p.add_argument_group("LoRA (a training checkpoint root written with actor_config.lora: adapters only)")
    g.add_argument("--lora-format", choices=["peft"], default=None,
                   help="write an HF PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    g.add_argument("--lora-merge", action="store_true",
                   help="write a merged HF checkpoint: base + scaling * B @ A")
    g.add_argument("--base-dir", default=None,
                   help="--lora-merge: the HF base model (default: the megatron checkpoint the run loaded, actor_config.load)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from mindrl.checkpoint.convert import convert
    from mindrl.checkpoint.tensor_io import CheckpointError

    try:
        layers = [int(x) for x in args.num_layer_list.split(",")] if args.num_layer_list else None
    except ValueError:
        print(f"error: --num-layer-list {args.num_layer_list!r} is not a comma-separated list of integers", file=sys.stderr)
        return 2
    try:
        convert(model_type=args.model_type_hf, load_type=args.load_model_type, save_type=args.save_model_type,
                load_dir=args.load_dir, save_dir=args.save_dir, tp=args.target_tensor_parallel_size,
                pp=args.target_pipeline_parallel_size, ep=args.target_expert_parallel_size, num_layer_list=layers,
                vpp_layers=args.num_layers_per_virtual_pipeline_stage, params_dtype=args.params_dtype,
                overwrite=args.overwrite, lora_format=args.lora_format, lora_merge=args.lora_merge,
                base_dir=args.base_dir)
    except (CheckpointError, ValueError, KeyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.save_model_type} checkpoint to {args.save_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
