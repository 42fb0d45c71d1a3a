"""Did the run learn the task? `python -m mindrl.cli.summarize OUTPUT_DIR [--window 10] [--min-gain 0.3]`.

Reads `OUTPUT_DIR/metrics.jsonl` and compares the first `window` steps with the last `window`.
Task accuracy and format are judged separately, because a policy can learn the tags and never
the task (R1-Zero's format reward usually rises first):

- accuracy: the `accuracy` metric (the task scorer's share of correct answers, never format).
  LEARNED when the last window's mean is at least `--min-gain` above the first window's;
- format: `reward/format/mean`. WELL FORMED when the last window's mean is at least `--min-format`.

When `OUTPUT_DIR/eval/<name>/summary.json` files exist (`python -m mindrl.evaluate --output
OUTPUT_DIR/eval/<name>`; the tiny demo writes `warm_start` before GRPO and `trained` after), their
accuracy (avg@k) and format are shown too: `warm_start` is the starting point of the run.

Prints a table and one closing line; exits 1 unless accuracy LEARNED (and, when the run logs a
format reward, WELL FORMED).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mindrl.trainer.tracking import read_metrics

ACCURACY = "accuracy"
FORMAT = "reward/format/mean"


def window_mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return sum(vals) / len(vals) if vals else None


def read_evals(output_dir: str | Path) -> dict[str, dict]:
    """{name: {"accuracy", "format", "items", "k"}} from OUTPUT_DIR/eval/*/summary.json (first dataset of each)."""
    found = {}
    for path in sorted(Path(output_dir).glob("eval/*/summary.json")):
        try:
            datasets = json.loads(path.read_text(encoding="utf-8"))["datasets"]
            d = next(iter(datasets.values()))
            found[path.parent.name] = {"accuracy": float(d["avg_at_k"]), "format": d.get("format"),
                                       "items": d.get("items"), "k": d.get("k")}
        except (OSError, ValueError, KeyError, StopIteration, TypeError) as err:
            print(f"warning: ignoring {path}: {err!r}", file=sys.stderr)
    return found


def verdict(rows: list[dict], window: int, min_gain: float, min_format: float) -> tuple[bool, str]:
    """(passed, closing line): accuracy judged by its gain, format by its final level."""
    first, last = rows[:window], rows[-window:]
    acc0, acc1 = window_mean(first, ACCURACY), window_mean(last, ACCURACY)
    if acc0 is None or acc1 is None:
        return False, f"no `{ACCURACY}` metric logged (the run has no task scorer): accuracy NOT LEARNED"
    gain = acc1 - acc0
    acc_ok = gain >= min_gain
    line = (f"accuracy {acc0:.3f} -> {acc1:.3f}, gain {gain:+.3f} ({'>=' if acc_ok else '<'} {min_gain}): "
            f"{'LEARNED' if acc_ok else 'NOT LEARNED'}")
    fmt0, fmt1 = window_mean(first, FORMAT), window_mean(last, FORMAT)
    fmt_ok = True
    if fmt0 is not None and fmt1 is not None:
        fmt_ok = fmt1 >= min_format
        line += (f" | format {fmt0:.3f} -> {fmt1:.3f} ({'>=' if fmt_ok else '<'} {min_format}): "
                 f"{'WELL FORMED' if fmt_ok else 'NOT WELL FORMED'}")
    return acc_ok and fmt_ok, line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mindrl.cli.summarize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir")
    p.add_argument("--window", type=int, default=10, help="steps compared at each end (default %(default)s)")
    p.add_argument("--min-gain", type=float, default=0.3, help="accuracy gain needed (default %(default)s)")
    p.add_argument("--min-format", type=float, default=0.9,
                   help="final format share needed (default %(default)s)")
    args = p.parse_args(argv)
    rows = read_metrics(args.output_dir)
    if len(rows) < 2 * args.window:
        print(f"only {len(rows)} steps logged in {args.output_dir}/metrics.jsonl; need {2 * args.window} to compare",
              file=sys.stderr)
        return 1
    first, last = rows[:args.window], rows[-args.window:]
    from rich.console import Console
    from rich.table import Table

    evals = read_evals(args.output_dir)
    table = Table(title=f"{args.output_dir}: first {args.window} vs last {args.window} of {len(rows)} GRPO steps")
    columns = ["metric"] + (["warm start (eval)"] if "warm_start" in evals else []) + ["first", "last", "change"]
    columns += ["trained (eval)"] if "trained" in evals else []
    for col in columns:
        table.add_column(col)
    keys = [ACCURACY, FORMAT, "reward/mean"] + sorted(
        k for k in rows[-1] if k.startswith("reward/") and k.endswith("/mean") and k not in (FORMAT, "reward/mean"))
    keys += ["response_length/mean", "kl"]
    for key in keys:
        a, b = window_mean(first, key), window_mean(last, key)
        if a is None or b is None:
            continue
        cells = [key]
        if "warm_start" in evals:
            cells.append(_eval_cell(evals["warm_start"], key))
        cells += [f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}"]
        if "trained" in evals:
            cells.append(_eval_cell(evals["trained"], key))
        table.add_row(*cells)
    console = Console()
    (console if console.is_terminal else Console(width=120)).print(table)  # logs: no 80-column cut
    for name, e in sorted(evals.items(), key=lambda kv: kv[0] != "warm_start"):
        print(f"{name}: accuracy {e['accuracy']:.3f} (avg@{e['k']} over {e['items']} held-out prompts)"
              + (f", format {e['format']:.3f}" if isinstance(e.get("format"), (int, float)) else ""))
    ok, line = verdict(rows, args.window, args.min_gain, args.min_format)
    print(line)
    return 0 if ok else 1


def _eval_cell(e: dict, key: str) -> str:
    value = {ACCURACY: e["accuracy"], FORMAT: e.get("format")}.get(key)
    return f"{value:.3f}" if isinstance(value, (int, float)) else ""


if __name__ == "__main__":
    sys.exit(main())
