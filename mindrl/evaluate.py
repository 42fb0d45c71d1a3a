"""Evaluate a model on math / GSM8K / Countdown eval sets: generate, score, report.

    python -m mindrl.evaluate --model /models/Qwen2.5-7B-grpo --datasets math500,aime24,amc23 \\
        math500.input=data/eval/math500.jsonl aime24.input=data/eval/aime24.jsonl \\
        amc23.input=data/eval/amc23.jsonl --n aime24=8 --max-tokens 2048 --tp 2 --nproc 2
    python -m mindrl.evaluate --model output/run/checkpoints --datasets data/eval/gsm8k_test --limit 200

--model is an HF directory (config.json + *.safetensors; converted in memory, nothing written) or a
megatron checkpoint (tools/convert_ckpt.py output or a trainer's checkpoints/ dir: it has
mindrl_layout.json; any layout, re-sliced for --tp/--pp/--ep). Generation uses the built-in
rollout engine at that layout on --nproc processes (spawned here, or one per torchrun process).

Each entry of --datasets is a preprocessed prompt set PREFIX (PREFIX_meta.json exists), a dataset
config name from configs/datasets (math500, aime24, amc23, gsm8k, countdown, ...) or a config YAML
path, optionally named LABEL=SPEC. Dataset configs are preprocessed first with --tokenizer into
OUTPUT/prompts/LABEL_*; change their keys with positional overrides, `LABEL.key=value` for one
dataset or `key=value` for all (e.g. gsm8k.input=data/gsm8k/test.jsonl, seq_length=2048).

Per-dataset options take `VALUE` (every dataset) or `LABEL=VALUE` (one), repeatable: --n, --limit,
--scorer, --template. Default scorers by the set's handler: math -> acc (base_acc with
--strict-format: the answer counts only in R1 format), gsm8k -> gsm8k, countdown -> countdown; the
`format` reward is always scored too. Tag scorers get prefix "<think>" when prompts end with it.

Metrics: avg@k = mean reward over the k samples of every prompt; pass@k = share of prompts whose
best sample is correct (mean of per-prompt max). Outputs in --output: LABEL.jsonl (one row per
sample: prompt, completion, labels, reward, reward_parts, finish_reason, ...) and summary.json;
a table is printed at the end. Bad input stops with one `error:` line before any model is loaded.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

PROG = "python -m mindrl.evaluate"


def build_parser() -> argparse.ArgumentParser:
    from mindrl.data.config import available_configs
    from mindrl.rewards.registry import describe

    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"dataset configs: {', '.join(available_configs())}\nscorers:\n{describe()}\n\n"
                                       "exit status: 0 ok, 2 bad input (nothing loaded), 1 failure while running")
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="HF directory or megatron checkpoint directory")
    g.add_argument("--adapter", default=None, help="LoRA on top of --model: an HF PEFT folder, or a mindrl LoRA "
                   "training checkpoint root (a LoRA checkpoint root given as --model brings its recorded base)")
    g.add_argument("--tokenizer", help="tokenizer directory (default: --model, or its hf/ for a megatron checkpoint)")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights/compute dtype (auto: fp32 on CPU, else bf16 if config.json says bf16/fp16)")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128, dest="vocab_divisible_by",
                   help="vocab padding (x TP), as megatron's flag (default %(default)s)")
    g = p.add_argument_group("data")
    g.add_argument("--datasets", action="append", required=True, metavar="SPEC[,SPEC...]",
                   help="prompt-set prefixes, dataset config names or YAML paths, each optionally LABEL=SPEC")
    g.add_argument("overrides", nargs="*", metavar="LABEL.key=value",
                   help="dataset config overrides (key=value applies to every dataset config)")
    g.add_argument("--template", action="append", metavar="[LABEL=]NAME", help="prompt_type for dataset configs")
    g.add_argument("--limit", action="append", metavar="[LABEL=]N", help="evaluate only the first N prompts (0: all)")
    g = p.add_argument_group("scoring")
    g.add_argument("--scorer", action="append", metavar="[LABEL=]NAME", help="accuracy scorer (default by dataset)")
    g.add_argument("--strict-format", action="store_true", help="math sets: base_acc (format and answer) instead of acc")
    g.add_argument("--reward-timeout", type=float, default=5.0, help="CPU seconds per item (default %(default)s)")
    g.add_argument("--reward-workers", type=int, default=None, help="scorer processes (default: CPUs, at most 8)")
    g = p.add_argument_group("sampling")
    g.add_argument("--n", action="append", metavar="[LABEL=]K", help="samples per prompt, the k of avg@k (default 1)")
    g.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default %(default)s)")
    g.add_argument("--top-p", type=float, default=0.95, help="default %(default)s")
    g.add_argument("--top-k", type=int, default=-1, help="-1 = off (default)")
    g.add_argument("--max-tokens", type=int, default=2048, help="generated tokens per sample (default %(default)s)")
    g.add_argument("--stop", action="append", default=[], help="extra stop string (the template's stop words always apply)")
    g.add_argument("--seed", type=int, default=1234, help="sampling seed (default %(default)s)")
    g.add_argument("--max-batch-size", type=int, default=256, help="sequences per static batch (default %(default)s)")
    g = p.add_argument_group("parallelism")
    g.add_argument("--tp", type=int, default=1, help="tensor parallel size")
    g.add_argument("--pp", type=int, default=1, help="pipeline parallel size")
    g.add_argument("--ep", type=int, default=1, help="expert parallel size (MoE)")
    g.add_argument("--nproc", type=int, default=None,
                   help="processes (default: the layout's minimum, PP x lcm(TP, EP)); the rest is data parallel")
    g.add_argument("--backend", default="auto", choices=["auto", "cuda", "npu", "cpu"], help="default %(default)s")
    g = p.add_argument_group("output")
    g.add_argument("--output", default="output/eval", help="directory for LABEL.jsonl and summary.json "
                                                            "(default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    from mindrl.eval.plan import EvalError, build_plan

    nproc = args.nproc or args.pp * math.lcm(args.tp, args.ep)
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if torchrun and args.nproc is None:
        nproc = int(os.environ["WORLD_SIZE"])
    try:
        if torchrun and nproc != int(os.environ["WORLD_SIZE"]):
            raise EvalError(f"--nproc {nproc} but torchrun started WORLD_SIZE={os.environ['WORLD_SIZE']} processes")
        if nproc < 1 or args.max_batch_size < 1:
            raise EvalError("--nproc and --max-batch-size must be >= 1")
        quiet = torchrun and os.environ["RANK"] != "0"
        plan = build_plan(
            model=args.model, tokenizer=args.tokenizer,
            datasets=[s for group in args.datasets for s in group.split(",") if s], overrides=args.overrides,
            templates=args.template, scorers=args.scorer, ns=args.n, limits=args.limit,
            strict_format=args.strict_format, stop=args.stop, output=args.output,
            # Under torchrun every process preprocesses dataset configs itself: one directory each.
            prompts_dir=os.path.join(args.output, "prompts", f"rank_{os.environ['RANK']}") if torchrun else None,
            log=(lambda _msg: None) if quiet else print,
            tp=args.tp, pp=args.pp, ep=args.ep, nproc=nproc, backend=args.backend, dtype=args.dtype,
            vocab_divisible_by=args.vocab_divisible_by, temperature=args.temperature, top_p=args.top_p,
            top_k=args.top_k, max_tokens=args.max_tokens, seed=args.seed, max_batch_size=args.max_batch_size,
            reward_timeout=args.reward_timeout, reward_workers=args.reward_workers, adapter=args.adapter)
    except EvalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from mindrl.eval.runner import rank_main

    if torchrun or nproc == 1:
        rank_main(plan)
    else:
        from mindrl.utils.launch import spawn

        spawn(rank_main, nproc, plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
