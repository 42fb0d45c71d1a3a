"""Did the run learn? `python -m mindrl.cli.summarize OUTPUT_DIR [--window 10] [--min-gain 0.3]`.

Compares the mean `reward/mean` of the last `window` steps with the first `window` and prints a
small table; exits 1 when the gain is below `--min-gain` (the tiny demo's acceptance check).
"""
from __future__ import annotations

import argparse
import sys

from mindrl.trainer.tracking import read_metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mindrl.cli.summarize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--min-gain", type=float, default=0.3)
    args = p.parse_args(argv)
    rows = read_metrics(args.output_dir)
    if len(rows) < 2 * args.window:
        print(f"only {len(rows)} steps logged; need {2 * args.window} to compare", file=sys.stderr)
        return 1

    def mean(key: str, part: list[dict]) -> float:
        vals = [r[key] for r in part if isinstance(r.get(key), (int, float))]
        return sum(vals) / max(1, len(vals))

    first, last = rows[:args.window], rows[-args.window:]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.output_dir}: first {args.window} vs last {args.window} of {len(rows)} steps")
    for col in ("metric", "first", "last", "change"):
        table.add_column(col)
    keys = ["reward/mean"] + sorted(k for k in rows[-1] if k.startswith("reward/") and k.endswith("/mean")
                                    and k != "reward/mean") + ["response_length/mean", "kl"]
    for key in keys:
        a, b = mean(key, first), mean(key, last)
        table.add_row(key, f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}")
    Console().print(table)
    gain = mean("reward/mean", last) - mean("reward/mean", first)
    ok = gain >= args.min_gain
    print(f"reward gain {gain:+.3f} ({'>=' if ok else '<'} {args.min_gain}): {'LEARNED' if ok else 'NOT LEARNED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
