"""Every benchmark in one table: `python -m benchmarks.run_all [--quick]`.

Runs each component benchmark (benchmarks/*.py) and the GRPO comparison with TRL in its own
process, one after the other (never in parallel: they time the same cores), and prints one
markdown table — benchmark, measurement, result — built from the rows of each one's own table,
then each benchmark's footer line. `--quick` uses smaller sizes and fewer steps (meant to finish
in under 15 minutes on an idle 2-core machine; the GRPO comparison then runs 1 x 8 only).
A benchmark whose inputs are missing (e.g. the Qwen2.5 tokenizer under ../shared) says so.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def plan(quick: bool) -> list[tuple[str, list[str]]]:
    """(name, argv after `python -m`) per benchmark."""
    if quick:
        return [
            ("convert", ["benchmarks.convert", "--layers", "2"]),
            ("preprocess", ["benchmarks.preprocess", "--repeats", "2"]),
            ("rewards", ["benchmarks.rewards", "--math-items", "300", "--countdown-items", "5000"]),
            ("rollout", ["benchmarks.rollout", "--batch", "16", "--new", "32"]),
            ("step_parts", ["benchmarks.step_parts", "--tokens", "1024", "--repeats", "2"]),
            ("reshard", ["benchmarks.reshard", "--repeats", "3"]),
            ("rollout_vs_hf", ["benchmarks.grpo_vs_trl", "--rollout-only", "64", "--new", "8", "--rounds", "2"]),
            ("rollout_engines", ["benchmarks.rollout_engines", "--quick"]),
            ("efficiency", ["benchmarks.efficiency", "--quick"]),
            ("train_switches", ["benchmarks.train_switches", "--quick"]),
            ("fused_head", ["benchmarks.fused_head", "--tokens", "512", "--repeats", "2"]),
            ("lora", ["benchmarks.lora", "--layers", "2", "--repeats", "2", "--gen-repeats", "2"]),
            ("lora_vllm_push", ["benchmarks.lora_vllm_push", "--layers", "2", "--repeats", "2", "--gen-tokens", "8"]),
            ("grpo_vs_trl", ["benchmarks.grpo_vs_trl", "--settings", "1x8", "--steps", "2", "--warmup", "1",
                             "--rounds", "1"]),
        ]
    return [
        ("convert", ["benchmarks.convert"]),
        ("preprocess", ["benchmarks.preprocess"]),
        ("rewards", ["benchmarks.rewards"]),
        ("rollout", ["benchmarks.rollout"]),
        ("step_parts", ["benchmarks.step_parts"]),
        ("reshard", ["benchmarks.reshard", "--repeats", "5"]),
        ("rollout_vs_hf", ["benchmarks.grpo_vs_trl", "--rollout-only", "64", "--new", "32", "--rounds", "3"]),
        ("rollout_engines", ["benchmarks.rollout_engines"]),
        ("efficiency", ["benchmarks.efficiency"]),
        ("train_switches", ["benchmarks.train_switches"]),
        ("fused_head", ["benchmarks.fused_head"]),
        ("lora", ["benchmarks.lora"]),
        ("lora_vllm_push", ["benchmarks.lora_vllm_push"]),
        ("grpo_vs_trl", ["benchmarks.grpo_vs_trl"]),
    ]


def table_rows(output: str) -> tuple[list[list[str]], list[str]]:
    """The data rows of the markdown table(s) in a benchmark's output, and its other non-empty lines."""
    rows, other = [], []
    for line in output.splitlines():
        s = line.strip()
        if s.startswith("|") and s.endswith("|"):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if all(set(c) <= set("-: ") for c in cells):
                continue  # separator
            rows.append(cells)
        elif s:
            other.append(s)
    return rows, other


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default="", help="comma-separated benchmark names to run")
    args = p.parse_args(argv)
    only = {x for x in args.only.split(",") if x}
    out_rows: list[tuple[str, str, str]] = []
    notes: list[str] = []
    for name, cmd in plan(args.quick):
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        print(f"{name}: {seconds:.0f} s (rc {proc.returncode})", file=sys.stderr, flush=True)
        if proc.returncode:
            out_rows.append((name, "FAILED", (proc.stderr.strip().splitlines() or ["?"])[-1][:200]))
            continue
        rows, other = table_rows(proc.stdout)
        header = rows[0] if rows else []
        for cells in rows[1:]:
            result = "; ".join(f"{h}: {c}" for h, c in zip(header[1:], cells[1:]) if c)
            out_rows.append((name, cells[0], result))
        if not rows:
            out_rows.append((name, "-", " ".join(other)[:300]))
        notes += [f"{name}: {line}" for line in other[-2:]]
        notes.append(f"{name}: `python -m {' '.join(cmd)}` took {seconds:.0f} s")
    print("| benchmark | measurement | result |\n|---|---|---|")
    for r in out_rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    print()
    for n in notes:
        print(f"- {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
