"""Prepare the tiny CPU GRPO demo: tokenizer, task data, prompt sets and a warm-started policy.

    python -m mindrl.cli.prepare_tiny_demo --out output/tiny

The demo is R1-Zero in miniature. Task: the largest of three digits, "max(3,8,5)=? <think>" -> the
model finishes the thought and answers in the R1 format: " 3 8 5 </think> <answer>8</answer>".
Rewards: the real `format` and `acc` scorers (configs/grpo_tiny_cpu.yaml); `accuracy` is `acc`.

Nothing is downloaded, so the model starts from random weights, and a random model never writes
the R1 tags. The *warm start* (`--warm-steps` SFT steps) teaches the format and the scratchpad
shape -- restate the three operands, then answer one of them -- but not the answer: the answer in
every warm-start target is an operand picked blindly (`warm_completion`), so the targets carry no
information about which operand is the largest and the warm-started policy answers right at chance
(0.385 over all digit triples, ties included; less where it miscopies; the demo measures the warm
start on held-out prompts before GRPO). No question-independent policy beats chance either: always
answering 9 scores 0.271. Whatever accuracy GRPO adds above that, it learned from the `acc` reward
alone: to compare the operands.

Writes into --out: tokenizer/ (a character-level HF tokenizer), tasks.jsonl and data/tiny_* (the
training prompts, via mindrl.data.preprocess), tasks_eval.jsonl and data/tiny_eval_* (100 held-out
digit triples, never trained on), warm_start/ (an HF checkpoint: tools/convert_ckpt.py turns it
into the training layout, as for a real model).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from mindrl.utils.io import atomic_write_text

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


NUM_OPERANDS = 3
HELD_OUT = 100  # of the 1,000 digit triples, never trained on (warm start or GRPO): the eval prompts


def split_triples(seed: int) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """All 1,000 digit triples, shuffled with `seed`: (train, held out)."""
    triples = [(a, b, c) for a in range(10) for b in range(10) for c in range(10)]
    random.Random(seed).shuffle(triples)
    return triples[HELD_OUT:], triples[:HELD_OUT]


def task(nums: tuple[int, ...]) -> dict:
    """(3, 8, 5) -> 'max(3,8,5)=? <think>' with answer '8': the largest of three digits, in the R1 format."""
    return {"question": f"max({','.join(map(str, nums))})=? <think>", "answer": str(max(nums))}


def make_tasks(count: int, seed: int) -> tuple[list[dict], list[dict]]:
    """`count` training prompts drawn from the training triples, and one prompt per held-out triple."""
    train, held_out = split_triples(seed)
    rng = random.Random(seed + 1)
    return [task(rng.choice(train)) for _ in range(count)], [task(t) for t in held_out]


def operands(row: dict) -> list[str]:
    return row["question"][len("max("):row["question"].index(")")].split(",")


def warm_completion(row: dict, rng: random.Random) -> str:
    """A well-formed R1 completion whose answer is one operand picked blindly (never by comparing).

    The thought restates the operands; the answer is a uniformly random one of them, drawn without
    looking at which is largest. So the warm-start data say nothing about *which* operand is the
    answer: P(target = operand i | question) = 1/3 for every i, the largest included. A model that
    fits these data perfectly answers right exactly at chance (0.385 with ties); everything above
    that is learned by GRPO from the `acc` reward. The gold answer (`row["answer"]`) is never read.
    """
    nums = operands(row)
    return f" {' '.join(nums)} </think> <answer>{rng.choice(nums)}</answer>"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mindrl.cli.prepare_tiny_demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="output/tiny", help="output directory (default: %(default)s)")
    p.add_argument("--num-tasks", type=int, default=2000)
    p.add_argument("--warm-steps", type=int, default=1000, help="SFT steps of the warm start (default: %(default)s)")
    p.add_argument("--warm-lr", type=float, default=3e-3, help="its peak learning rate, cosine-decayed to 0 "
                                                              "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config-name", default="grpo_tiny_cpu", help="the recipe whose model/layout to warm-start")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the recipe (as for train_grpo)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(out / "tokenizer")
    tasks, held_out = make_tasks(args.num_tasks, args.seed)
    from mindrl.data.config import load_config as load_dataset_config
    from mindrl.data.preprocess import preprocess

    for rows, name, prefix in ((tasks, "tasks.jsonl", "tiny"), (held_out, "tasks_eval.jsonl", "tiny_eval")):
        atomic_write_text(out / name, "".join(json.dumps(row) + "\n" for row in rows))
        data_cfg = load_dataset_config("tiny_demo", [f"input={out / name}", f"tokenizer_name_or_path={out / 'tokenizer'}",
                                                     f"output_prefix={out / 'data' / prefix}"])
        preprocess(data_cfg, tokenizer=tokenizer, progress=False)

    from mindrl.cli.warm_start import warm_start

    warm_start(args.config_name, args.overrides + [f"megatron_training.tokenizer_name_or_path={out / 'tokenizer'}"],
               tasks, warm_completion, out / "warm_start", steps=args.warm_steps, seed=args.seed, lr=args.warm_lr)
    print(f"prepared {out}: tokenizer/, tasks.jsonl, tasks_eval.jsonl, data/tiny_*, data/tiny_eval_*, warm_start/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
