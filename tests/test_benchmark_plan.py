"""`python -m benchmarks.run_all` runs every component benchmark: each planned module exists and every
benchmark script (but the runner itself and the profiler, which prints a profile, not a table) is planned."""
from __future__ import annotations

from pathlib import Path

from benchmarks.run_all import plan

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_run_all_plans_every_benchmark_in_both_modes():
    scripts = {p.stem for p in BENCH.glob("*.py")} - {"__init__", "run_all", "profile_rollout"}
    for quick in (True, False):
        modules = {argv[0] for _, argv in plan(quick)}
        assert all((BENCH / f"{m.split('.', 1)[1]}.py").exists() for m in modules), modules
        assert scripts <= {m.split(".", 1)[1] for m in modules}, scripts - {m.split(".", 1)[1] for m in modules}
