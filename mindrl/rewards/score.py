"""Offline scoring: add rule-based rewards to a JSONL file of completions.

    python -m mindrl.rewards.score --scorer acc --input rows.jsonl --output scored.jsonl
    python -m mindrl.rewards.score --scorer format --scorer countdown --weights 0.1,1.0 \\
        --option format.prefix='<think>' --input rows.jsonl --output scored.jsonl
"""
from __future__ import annotations


import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from mindrl.rewards.registry import describe
from mindrl.utils.io import atomic_write_text

PROG = "python -m mindrl.rewards.score"


class InputError(Exception):
    """Bad command line or input file: reported as one line, before any scoring starts."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score completions with rule-based reward scorers (sandboxed: per-item timeout, "
                    "crash isolation) and write each row back with its reward.",
        epilog=(
            "Input: JSONL, one object per line with a 'completion' string plus label fields: 'label' (gold\n"
            "answer) for acc/base_acc/gsm8k/math23k, 'nums' and 'target' for countdown, 'response_length'\n"
            "(tokens) for overlong. Output: the same rows in the same order, each with 'reward' (weighted\n"
            "sum), 'reward_parts' ({scorer: value}) and, where a scorer timed out or failed (its value is\n"
            "then --fallback), 'reward_status' ({scorer: 'timeout'|'error'}). Written atomically.\n\n"
            f"Scorers:\n{describe()}\n\n"
            "Exit status: 0 ok, 2 bad arguments or input (nothing is written)."),
    )
    parser.add_argument("--scorer", action="append", required=True, metavar="NAME",
                        help="a scorer name; repeat for a weighted sum")
    parser.add_argument("--weights", metavar="W1,W2,...", help="one weight per --scorer (default: all 1.0)")
    parser.add_argument("--option", action="append", default=[], metavar="NAME.KEY=VALUE",
                        help="a scorer option, VALUE parsed as JSON when it can be (e.g. think_len.min_chars=500)")
    parser.add_argument("--input", required=True, type=Path, help="JSONL file of rows to score")
    parser.add_argument("--output", required=True, type=Path, help="where to write the scored JSONL")
    parser.add_argument("--timeout", type=float, default=1.0,
                        help="CPU seconds per item and scorer (default 1)")
    parser.add_argument("--wall-timeout", type=float, default=None,
                        help="wall seconds before a blocked item's worker is killed (default max(10*timeout, 10))")
    parser.add_argument("--fallback", type=float, default=0.0, help="value of a timed-out/failed part (default 0)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs, at most 8)")
    return parser


def parse_weights(text: str | None, n: int) -> list[float] | None:
    if text is None:
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise InputError(f"--weights must be comma-separated numbers, got {text!r}") from None
    if len(weights) != n:
        raise InputError(f"--weights has {len(weights)} value(s) for {n} --scorer(s)")
    return weights


def parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        name, dot, opt = key.partition(".")
        if not (sep and dot and name and opt):
            raise InputError(f"--option must look like NAME.KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw  # a bare string such as <think>
        options.setdefault(name, {})[opt] = value
    return options


def read_rows(path: Path) -> list[dict[str, Any]]:
    """All rows, or InputError naming the first bad line. Blank lines are skipped."""
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    rows = []
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                if not isinstance(row.get("completion"), str):
                    what = "no 'completion' field" if "completion" not in row else "'completion' is not a string"
                    raise InputError(f"{path}:{lineno}: {what}")
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def write_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write to a temp file in the same directory, then rename: readers never see half a file."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def run(args: argparse.Namespace) -> int:
    from mindrl.rewards.combine import RewardFunction, resolve_scorers
    from mindrl.rewards.sandbox import OK, STATUS_NAMES, RewardSandbox

    weights = parse_weights(args.weights, len(args.scorer))
    options = parse_options(args.option)
    if args.timeout <= 0:
        raise InputError(f"--timeout must be > 0, got {args.timeout}")
    if not args.output.parent.is_dir():
        raise InputError(f"output directory does not exist: {args.output.parent}")
    try:  # names, weights and options: all checked before any worker starts
        plan = resolve_scorers(args.scorer, weights, options)
    except (ValueError, TypeError) as exc:
        raise InputError(str(exc)) from None
    rows = read_rows(args.input)

    t0 = time.perf_counter()
    with RewardSandbox(num_workers=args.workers, timeout=args.timeout, wall_timeout=args.wall_timeout,
                       fallback=args.fallback) as box:
        reward_fn = RewardFunction(plan, box)
        labels = [{k: v for k, v in row.items() if k != "completion"} for row in rows]
        out = reward_fn([row["completion"] for row in rows], labels)
    elapsed = time.perf_counter() - t0

    for i, row in enumerate(rows):
        row["reward"] = out.total[i]
        row["reward_parts"] = {name: out.parts[name][i] for name in reward_fn.names}
        bad = {name: STATUS_NAMES[out.status[name][i]] for name in reward_fn.names if out.status[name][i] != OK}
        if bad:
            row["reward_status"] = bad
    write_atomic(args.output, rows)

    n = len(rows)
    terms = " + ".join(f"{w:g}*{name}" for name, w in zip(reward_fn.names, reward_fn.weights))
    print(f"scored {n} rows with {terms} in {elapsed:.2f} s ({n / elapsed:.0f} rows/s)")
    for name in reward_fn.names:
        m = out.metrics
        print(f"  {name:<19} mean {m[f'reward/{name}/mean']:.4f}  timeouts {m[f'reward/{name}/timeouts']:.0f}"
              f"  errors {m[f'reward/{name}/errors']:.0f}")
    print(f"mean reward {out.metrics['reward/mean']:.4f}, timeouts {out.metrics['reward/timeouts']:.0f}, "
          f"errors {out.metrics['reward/errors']:.0f} -> {args.output}")
    for msg in out.error_messages[:3]:
        print(f"  e.g. {msg}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except InputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
