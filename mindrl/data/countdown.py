"""Countdown task generator (the public Countdown-Tasks-3to4 set is itself generated).

    python -m mindrl.data.countdown --num 100000 --seed 0 --out tasks.jsonl

Each task is 3-4 numbers in [1, 99] (repeats allowed, as in the public set) and an integer target
in [10, 100] that an expression using every number exactly once with + - * / reaches. The target
is made by building such an expression at random (exact rational arithmetic, so 7 / 2 * 4 = 14 is
fine), keeping it when its value is an integer in range; the expression is stored as ``solution``.
The same seed gives the same file.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from fractions import Fraction
from typing import Optional, Sequence

OPS = ("+", "-", "*", "/")


def _apply(op: str, a: int | Fraction, b: int | Fraction) -> int | Fraction | None:
    # Values stay Python ints until a division is inexact (Fraction only then): exact, and much
    # faster than Fractions throughout. None for division by zero.
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None
    if isinstance(a, int) and isinstance(b, int) and a % b == 0:
        return a // b
    return Fraction(a, b)


def _random_expression(rng: random.Random, nums: Sequence[int], low: int, high: int) -> Optional[tuple[int, str]]:
    """A random expression using every number once whose value is an integer in [low, high], or None.

    Random pairs are combined (so every tree shape and operand order can occur) until two terms are
    left; the last operation is then drawn among those that land in range. Drawing it blindly would
    miss the range 15 times out of 16, for the same set of tasks.
    """
    terms: list[tuple[int | Fraction, str]] = [(n, str(n)) for n in nums]
    while len(terms) > 2:
        b, b_text = terms.pop(rng.randrange(len(terms)))
        a, a_text = terms.pop(rng.randrange(len(terms)))
        op = OPS[rng.randrange(4)]
        value = _apply(op, a, b)
        if value is None:
            return None
        terms.append((value, f"({a_text} {op} {b_text})"))
    (a, a_text), (b, b_text) = terms
    finals = []
    for x, x_text, y, y_text in ((a, a_text, b, b_text), (b, b_text, a, a_text)):
        for op in OPS:
            value = _apply(op, x, y)
            if value is not None and low <= value <= high and (isinstance(value, int) or value.denominator == 1):
                finals.append((int(value), f"{x_text} {op} {y_text}"))
    return rng.choice(finals) if finals else None


def make_task(rng: random.Random, *, min_nums: int = 3, max_nums: int = 4, max_number: int = 99,
              min_target: int = 10, max_target: int = 100, tries_per_set: int = 4) -> dict:
    # Draw how many numbers first and keep it while retrying, so 3 and 4 numbers stay equally likely
    # (4 numbers land in range less often; retrying everything would skew towards 3).
    count = rng.randint(min_nums, max_nums)
    while True:
        nums = [rng.randint(1, max_number) for _ in range(count)]
        for _ in range(tries_per_set):
            found = _random_expression(rng, nums, min_target, max_target)
            if found is not None:
                return {"nums": nums, "target": found[0], "solution": found[1]}


def generate(num: int, seed: int = 0, **kwargs: int) -> list[dict]:
    rng = random.Random(seed)
    return [make_task(rng, **kwargs) for _ in range(num)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mindrl.data.countdown", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--num", type=int, required=True, help="number of tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output .jsonl ({nums, target, solution} per line)")
    parser.add_argument("--min-nums", type=int, default=3)
    parser.add_argument("--max-nums", type=int, default=4)
    parser.add_argument("--max-number", type=int, default=99, help="numbers are drawn from 1..max-number")
    parser.add_argument("--min-target", type=int, default=10)
    parser.add_argument("--max-target", type=int, default=100)
    args = parser.parse_args(argv)
    if not (args.num > 0 and 2 <= args.min_nums <= args.max_nums and args.max_number >= 1
            and args.min_target <= args.max_target):
        parser.error("need --num > 0, 2 <= --min-nums <= --max-nums, --max-number >= 1, --min-target <= --max-target")

    from tqdm import tqdm

    rng = random.Random(args.seed)
    options = dict(min_nums=args.min_nums, max_nums=args.max_nums, max_number=args.max_number,
                   min_target=args.min_target, max_target=args.max_target)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for _ in tqdm(range(args.num), desc="countdown tasks", unit="task", file=sys.stderr,
                          disable=None, mininterval=0.5):
                f.write(json.dumps(make_task(rng, **options)) + "\n")
        os.replace(tmp, args.out)  # never leave a half-written file under the real name
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {args.num} tasks to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
