"""`mindrl.plan.suggest` at several capacities, and the planner's plain path on every candidate it ranked, for
tests/plan/test_plan_suggest.py (one process: the planner's fake world is process-wide).

    python tests/plan/suggest_worker.py --job job.json --out out.json
job.json: {"config", "overrides", "devices", "capacities": [bytes, ...], "top"}
out.json: {"suggestions": [Suggestion.to_json() per capacity], "plain": {name: heaviest peak}}: the plain
peak is `plan_job` on a fresh `load_config(config, overrides + the candidate's own overrides)`, nothing
reused from the search.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--job", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    job = json.loads(Path(args.job).read_text())
    warnings.filterwarnings("ignore")
    logging.getLogger("megatron").setLevel(logging.ERROR)
    from mindrl.config import load_config
    from mindrl.plan.phases import plan_job
    from mindrl.plan.suggest import suggest

    cfg = load_config(job["config"], job["overrides"])
    results = [suggest(cfg, job["devices"], cap, top=job["top"]).to_json() for cap in job["capacities"]]
    plain: dict[str, int] = {}
    for result in results:
        for c in result["candidates"]:
            if c["status"] in ("fits", "does not fit", "pruned") and c["name"] not in plain:
                plan = plan_job(load_config(job["config"], job["overrides"] + c["overrides"]))
                plain[c["name"]] = max(r.peak for r in plan.ranks)
    Path(args.out).write_text(json.dumps({"suggestions": results, "plain": plain}))


if __name__ == "__main__":
    main()
