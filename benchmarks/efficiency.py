"""The GRPO step against the machine's matmul peak: model FLOPs, achieved GFLOP/s and % of peak per phase.

    python -m benchmarks.efficiency [--setting 8x8] [--steps 2] [--warmup 1] [--quick] [--profile N]
                                    [--set KEY=VALUE ...] [--tokenizer DIR] [--workdir DIR]

Work: `benchmarks.grpo_vs_trl`'s mindrl side (Qwen2-shaped hidden 256 x 4 layers, the real 151,936
vocabulary, fp32, Countdown prompts, n = 8, 64 new tokens, KL 0.04 to a reference), one process.
FLOPs: the trainer's own `perf/tflop_<phase>` (mindrl/models/flops.py: the batch's actual prompt and
response tokens, matmuls only, no recomputation or padding). Peak: a 2048 x 2048 fp32 `torch.mm` at
the threads the trainer uses (MINDRL_CPU_THREADS, else all cores), measured in this process right
before and right after the run (both printed; % of peak uses the higher). Times: `time/<phase>` of
the timed steps (medians); the run's peak RSS (its process's `ru_maxrss`). `--quick`: one timed step. `--profile N`: also print torch.profiler's top
N operators (self CPU time) over the timed steps. `--set KEY=VALUE` (repeatable): a trainer config override
on top of the benchmark's, e.g. `--set generate_config.packed_linear=true`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHASES = ("rollout", "reference", "old_log_probs", "update")


def _threads() -> int:
    return int(os.environ.get("MINDRL_CPU_THREADS", "0")) or (os.cpu_count() or 1)


def measure_peak() -> float:
    import torch

    from mindrl.backends.peak import measure_matmul_peak

    saved = torch.get_num_threads()
    torch.set_num_threads(_threads())
    try:
        return measure_matmul_peak(torch.float32, size=2048, repeats=5)
    finally:
        torch.set_num_threads(saved)


def child(args: argparse.Namespace) -> None:
    """One mindrl run (warm-up + timed steps), optionally profiled from the first timed step on."""
    from benchmarks.grpo_vs_trl import run_mindrl

    p = int(args.setting.split("x")[0])
    out = Path(args.out)
    if not args.profile:
        run_mindrl(Path(args.workdir), p, args.warmup + args.steps, out, args.set)
        return
    import torch

    import mindrl.trainer.train as train_mod

    real_step, calls = train_mod.grpo_step, [0]
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def profiled_step(run, step):  # noqa: ANN001, ANN202
        calls[0] += 1
        if calls[0] == args.warmup + 1:
            prof.start()
        return real_step(run, step)
    train_mod.grpo_step = profiled_step
    run_mindrl(Path(args.workdir), p, args.warmup + args.steps, out, args.set)
    prof.stop()
    (out / "profile.txt").write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))


def table(records: list[dict], peak: float) -> list[tuple[str, ...]]:
    """Rows (phase, TFLOP, seconds, GFLOP/s, % of peak) from the timed steps' metrics (medians)."""
    med = lambda key: statistics.median(r.get(key, 0.0) for r in records)  # noqa: E731
    rows = []
    for phase in PHASES:
        tflop, s = med(f"perf/tflop_{phase}"), med(f"time/{phase}")
        if tflop and s:
            rows.append((phase, f"{tflop:.3f}", f"{s:.2f}", f"{tflop * 1e3 / s:.0f}", f"{100 * tflop * 1e12 / s / peak:.0f}%"))
    other = med("time/step") - sum(med(f"time/{p}") for p in PHASES)
    rows.append(("other (data, rewards, advantages)", "-", f"{other:.2f}", "-", "-"))
    tflop, s = med("perf/tflop"), med("time/step")
    rows.append(("**whole step**", f"{tflop:.3f}", f"{s:.2f}", f"{tflop * 1e3 / s:.0f}", f"**{100 * tflop * 1e12 / s / peak:.0f}%**"))
    return rows


def main(argv: list[str] | None = None) -> int:
    from benchmarks.grpo_vs_trl import DEFAULT_TOKENIZER, prepare

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", default="8x8", help="prompts x samples per step")
    p.add_argument("--steps", type=int, default=2, help="timed steps")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="one timed step")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N operators of the timed steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a trainer config override, e.g. generate_config.packed_linear=true (repeatable)")
    p.add_argument("--workdir", default=str(REPO / "output" / "bench_grpo_vs_trl"))
    p.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.child:
        child(args)
        return 0
    if args.quick:
        args.steps = 1
    if not Path(args.tokenizer, "tokenizer.json").exists():
        print(f"skipped: the Qwen2.5 tokenizer is not at {args.tokenizer} (pass --tokenizer DIR)")
        return 0
    workdir = Path(args.workdir)
    prepare(workdir, Path(args.tokenizer))
    out = workdir / "runs" / f"efficiency_{args.setting}"
    # A fresh run directory: the trainer resumes from a previous run's checkpoints there (and then has no
    # steps left to run), so a second invocation would print the first one's metrics again.
    shutil.rmtree(out, ignore_errors=True)
    load = [os.getloadavg()[0]]
    peaks = [measure_peak()]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "benchmarks.efficiency", "--child", "--setting", args.setting, "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--workdir", str(workdir), "--out", str(out),
           "--profile", str(args.profile), *(f"--set={kv}" for kv in args.set)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    peak_rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # Linux: KiB; the run's process
    if proc.returncode:
        raise SystemExit(f"the mindrl run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    peaks.append(measure_peak())
    load.append(os.getloadavg()[0])
    records = [json.loads(x) for x in (out / "mindrl_run" / "metrics.jsonl").read_text().splitlines()][args.warmup:]
    peak = max(peaks)
    print("| phase | model TFLOP | seconds (median) | GFLOP/s | % of peak |\n|---|---:|---:|---:|---:|")
    for row in table(records, peak):
        print("| " + " | ".join(row) + " |")
    mfu = statistics.median(r.get("perf/mfu", float("nan")) for r in records)
    setting = args.setting + (" with " + " ".join(args.set) if args.set else "")
    print(f"\n{setting}, {len(records)} timed step(s) after {args.warmup} warm-up; fp32 matmul peak "
          f"(2048^2 torch.mm, {_threads()} threads) {peaks[0] / 1e9:.0f} GFLOP/s before the run, "
          f"{peaks[1] / 1e9:.0f} after; the trainer's own perf/mfu {100 * mfu:.0f}% (its peak measured in-process); "
          f"load average {load[0]:.1f} before, {load[1]:.1f} after; the run's peak RSS {peak_rss_gib:.2f} GiB")
    if args.profile:
        print("\n" + (out / "profile.txt").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
