"""Prepare the tiny CPU GRPO demo: tokenizer, task data, prompt set and a warm-started policy.

    python -m mindrl.cli.prepare_tiny_demo --out output/tiny

The demo is R1-Zero in miniature. Task: single-digit addition, "3+4=? <think>" -> the model must
finish the thought and answer in the R1 format: "... </think> <answer>7</answer>". Reward: the
real `format` and `acc` scorers (configs/grpo_tiny_cpu.yaml).

Nothing is downloaded, so the model starts from random weights, and a random model never writes
the R1 tags. The *warm start* (documented, short: `--warm-steps` SFT steps, ~1 minute) teaches
the tags on completions of which only half are well formed and whose answers are right only a
quarter of the time: the warm-started policy writes the format about half of the time and rarely
adds correctly. GRPO then has to discover, from rewards alone, that well-formed completions and
right sums pay.

Writes into --out: tokenizer/ (a character-level HF tokenizer), tasks.jsonl, data/tiny_* (the
prompt set, via mindrl.data.preprocess), warm_start/ (a megatron checkpoint for
actor_config.load, in the layout of the recipe).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ALPHABET = list("0123456789+-*/=?<>()[]{} abcdefghijklmnopqrstuvwxyz.,:")
SPECIALS = ["<pad>", "<eos>", "<unk>"]
VOCAB_SIZE = 64  # configs/grpo_tiny_cpu.yaml sets model.scale_down.vocab_size to this
UNUSED = [f"<unused{i}>" for i in range(VOCAB_SIZE - len(SPECIALS) - len(ALPHABET))]


def build_tokenizer(out: Path):
    """A character-level tokenizer saved as a regular HF tokenizer directory."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + ALPHABET + UNUSED)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                  additional_special_tokens=UNUSED)
    tok.save_pretrained(out)
    return tok


def make_tasks(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randrange(10), rng.randrange(10)
        rows.append({"question": f"{a}+{b}=? <think>", "answer": str(a + b)})
    return rows


def warm_completion(row: dict, rng: random.Random) -> str:
    """Half well formed, half broken; the answer right a quarter of the time (random otherwise)."""
    a, b = row["question"][0], row["question"][2]
    guess = row["answer"] if rng.random() < 0.25 else str(rng.randrange(19))
    thought = rng.choice([f" {a}+{b}", f" {b}+{a}", " hmm", f" {a} and {b}"])
    good = f"{thought} </think> <answer>{guess}</answer>"
    broken = rng.choice([
        f"{thought} <answer>{guess}</answer>",            # thought never closed
        f"{thought} </think> {guess}",                   # no answer tags
        f"{thought} </think> <answer>{guess}",           # answer never closed
        f"{thought} </think> <answer>{guess}</answer> ok",  # text after the answer
    ])
    return good if rng.random() < 0.5 else broken


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mindrl.cli.prepare_tiny_demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="output/tiny", help="output directory (default: %(default)s)")
    p.add_argument("--num-tasks", type=int, default=2000)
    p.add_argument("--warm-steps", type=int, default=60, help="SFT steps of the warm start (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config-name", default="grpo_tiny_cpu", help="the recipe whose model/layout to warm-start")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the recipe (as for train_grpo)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(out / "tokenizer")
    tasks = make_tasks(args.num_tasks, args.seed)
    with open(out / "tasks.jsonl", "w", encoding="utf-8") as f:
        for row in tasks:
            f.write(json.dumps(row) + "\n")

    from mindrl.data.config import load_config as load_dataset_config
    from mindrl.data.preprocess import preprocess

    data_cfg = load_dataset_config("tiny_addition", [f"input={out / 'tasks.jsonl'}",
                                                     f"tokenizer_name_or_path={out / 'tokenizer'}",
                                                     f"output_prefix={out / 'data' / 'tiny'}"])
    preprocess(data_cfg, tokenizer=tokenizer, progress=False)

    from mindrl.cli.warm_start import warm_start

    warm_start(args.config_name, args.overrides + [f"megatron_training.tokenizer_name_or_path={out / 'tokenizer'}"],
               tasks, warm_completion, out / "warm_start", steps=args.warm_steps, seed=args.seed)
    print(f"prepared {out}: tokenizer/, tasks.jsonl, data/tiny_*, warm_start/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
