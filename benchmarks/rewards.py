"""Reward scorer throughput through the sandbox (worker pool), printed as a table.

    python benchmarks/rewards.py                 # 2 workers, 1,000 math + 20,000 Countdown items
    python benchmarks/rewards.py --workers 4 --countdown-items 50000

Math items come from MATH-500 (../shared/data; synthetic fractions without it) shaped like an
R1-Zero GRPO batch: 125 problems x 8 samples, each "<think>reasoning</think>\\n<answer>…</answer>":
3 with the gold answer, 1 with "The answer is $gold$." (prose), 3 near misses (one digit of the
answer changed), 1 cut off inside <think> with no answer (acc then runs math-verify on the text;
base_acc stops at the format check). "first batch" runs on a freshly started pool; "next batch"
uses the next 125 problems on the same pool, as each step of a run would (no answer repeats
between batches, so parse caches do not help). "cross mix" is the worst case: every item a
different problem's reference solution, half with another problem's answer of a different
shape, where math-verify falls back to sympy simplify. "free text" is the cross mix with the final
answer unboxed, so it sits in the solution's last sentence (the free-text extraction path). Countdown items are Countdown-Tasks rows
with a random equation over their numbers; "format" on the same rows is the sandbox's own cost.

"worker CPU s" is the CPU time the workers reported; "CPU-bound s" = worker CPU / workers, the wall
time those items need on as many otherwise idle cores. On a busy machine wall time is longer.
Targets on a 2-core machine: 1,000 math items <= 2 s, Countdown >= 20,000 items/s.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindrl.rewards.registry import get_scorer  # noqa: E402
from mindrl.rewards.sandbox import RewardSandbox  # noqa: E402

DATA = Path(os.environ.get("MINDRL_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data"


def _perturb(answer: str) -> str:
    """A near miss of the same shape: the last digit changed (or "+1" when there is none)."""
    for i in range(len(answer) - 1, -1, -1):
        if answer[i].isdigit():
            return answer[:i] + str((int(answer[i]) + 1) % 10) + answer[i + 1:]
    return answer + "+1"


def _replace_last_boxed(text: str, new: str) -> str:
    cut = text.rfind("\\boxed")
    return (text[:cut] if cut >= 0 else text + " ") + "\\boxed{" + new + "}."


def _unbox(text: str, new: str | None = None) -> str:
    """The text with its last ``\\boxed{X}`` written as plain ``X`` (or ``new``): a free-text final."""
    cut = text.rfind("\\boxed{")
    if cut < 0:
        return text + f" The answer is ${new}$." if new is not None else text
    depth, i = 0, cut + len("\\boxed")
    for i in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            break
    return text[:cut] + (new if new is not None else text[cut + len("\\boxed{"):i]) + text[i + 1:]


def math_items(n: int, mix: str, offset: int = 0) -> tuple[list[str], list[dict], str]:
    """``grpo``: prompts x 8 R1-Zero-style samples (see the module docstring); ``cross``: every item
    a different problem's reference solution, half carrying another problem's answer; ``free``: the
    same, with the final answer unboxed (it sits in the solution's last sentence)."""
    path = DATA / "eval" / "math500.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.open(encoding="utf-8")]
        source = "MATH-500"
    else:
        rows = [{"solution": f"We get $\\boxed{{\\frac{{{i}}}{{{i + 7}}}}}$.", "answer": f"\\frac{{{i}}}{{{i + 7}}}"}
                for i in range(1, 501)]
        source = "synthetic fractions (no ../shared)"
    completions, labels = [], []
    for i in range(n):
        if mix in ("cross", "free"):
            row = rows[(offset + i) % len(rows)]
            other = rows[(offset + i * 7 + 3) % len(rows)]["answer"]
            if mix == "cross":
                completion = row["solution"] if i % 2 == 0 else _replace_last_boxed(row["solution"], other)
            else:
                completion = _unbox(row["solution"], None if i % 2 == 0 else other)
        else:
            row, k = rows[(offset + i // 8) % len(rows)], i % 8
            ans = row["answer"]
            thought = row["solution"].replace("\\boxed", "")  # the answer only in <answer>
            if k < 3:
                completion = f"<think>{thought}</think>\n<answer>{ans}</answer>"
            elif k == 3:
                completion = f"<think>{thought}</think>\n<answer>The answer is ${ans}$.</answer>"
            elif k < 7:
                completion = f"<think>{thought}</think>\n<answer>{_perturb(ans)}</answer>"
            else:  # cut off by the length limit: no answer anywhere
                completion = f"<think>{thought[: len(thought) // 2]}"
        completions.append(completion)
        labels.append({"label": row["answer"]})
    return completions, labels, f"{source}, {mix} mix"


def countdown_items(n: int, rng: random.Random) -> tuple[list[str], list[dict], str]:
    path = DATA / "countdown" / "countdown_train_10000.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.open(encoding="utf-8")]
        source = "Countdown-Tasks rows"
    else:
        rows = [{"nums": [rng.randint(1, 99) for _ in range(rng.choice((3, 4)))], "target": rng.randint(1, 99)}
                for _ in range(1000)]
        source = "random instances (no ../shared)"
    completions, labels = [], []
    for i in range(n):
        row = rows[i % len(rows)]
        nums = list(row["nums"])
        rng.shuffle(nums)
        expr = str(nums[0])
        for x in nums[1:]:
            expr = f"({expr} {rng.choice('+-*/')} {x})"
        completions.append(f"<think>Let me try combinations of {nums}.</think>\n<answer>{expr}</answer>")
        labels.append({"nums": row["nums"], "target": row["target"]})
    return completions, labels, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--math-items", type=int, default=1000)
    parser.add_argument("--countdown-items", type=int, default=20000)
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args()
    rng = random.Random(0)

    t0 = time.perf_counter()
    box = RewardSandbox(num_workers=args.workers, timeout=args.timeout)
    box.score([get_scorer("format")], ["x"] * args.workers, [{}] * args.workers)  # wait until all are up
    start_s = time.perf_counter() - t0

    n = args.math_items
    workloads = [  # (label, scorer, (completions, labels, source)); 125 problems per 1,000 grpo items
        ("acc, first batch", "acc", math_items(n, "grpo", offset=0)),
        ("acc, next batch", "acc", math_items(n, "grpo", offset=n // 8)),
        ("base_acc, next", "base_acc", math_items(n, "grpo", offset=2 * (n // 8))),
        ("acc, cross mix", "acc", math_items(n, "cross", offset=3 * (n // 8))),
        ("acc, free text", "acc", math_items(n, "free", offset=4 * (n // 8))),
        ("countdown", "countdown", countdown_items(args.countdown_items, rng)),
        ("format", "format", countdown_items(args.countdown_items, rng)),
    ]
    runs = []
    for label, name, (comps, labels, src) in workloads:
        restarts, caller0 = box.totals["worker_restarts"], time.process_time()
        res = box.score([get_scorer(name)], comps, labels)
        caller = time.process_time() - caller0
        mean = sum(v[0] for v in res.values) / max(1, len(res.values))
        runs.append((label, src, len(comps), res.elapsed_s, res.cpu_s, caller, mean, res.timeouts, res.errors,
                     box.totals["worker_restarts"] - restarts))
    box.close()

    print(f"reward sandbox: {args.workers} workers, timeout {args.timeout:g} s, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; pool start (forkserver, imports, warm-up) {start_s:.2f} s")
    print(f"{'workload':<17} {'items':>6} {'wall s':>7} {'items/s':>8} {'worker CPU s':>12} {'CPU-bound s':>11} "
          f"{'caller CPU s':>12} {'mean':>6} {'timeouts':>8} {'errors':>6} {'restarts':>8}  data")
    for label, src, n_items, secs, cpu, caller, mean, timeouts, errors, restarts in runs:
        print(f"{label:<17} {n_items:>6} {secs:>7.3f} {n_items / secs:>8.0f} {cpu:>12.2f} {cpu / args.workers:>11.3f} "
              f"{caller:>12.2f} {mean:>6.3f} {timeouts:>8} {errors:>6} {restarts:>8}  {src}")


if __name__ == "__main__":
    main()
