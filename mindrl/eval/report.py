"""Scoring, metrics and outputs of an evaluation (global rank 0 only).

Metrics per eval set, from the per-sample rewards of its accuracy scorer (k = samples per prompt):
- avg@k: the mean reward over all prompts and samples (accuracy averaged over k samples);
- pass@k: the mean over prompts of the best of its k rewards (for 0/1 scorers: the share of
  prompts with at least one correct sample);
- format: the mean `format` reward; mean response length (tokens); truncated: the share of
  samples that hit --max-tokens (finish reason "length").

Outputs in OUTPUT/: LABEL.jsonl (one row per sample) and summary.json, each written to a temporary
file and renamed into place.
"""
from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Any, Sequence

from mindrl.eval.plan import EvalPlan
from mindrl.utils.io import atomic_write_text

STATUS = {1: "timeout", 2: "error"}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """avg@k, pass@k and the rest from per-sample rows (`index`, `reward`, `reward_parts`, ...)."""
    by_item: dict[int, list[float]] = {}
    for r in rows:
        by_item.setdefault(r["index"], []).append(float(r["reward"]))
    samples = len(rows)
    k = max((len(v) for v in by_item.values()), default=0)
    formats = [r["reward_parts"]["format"] for r in rows if "format" in r["reward_parts"]]
    return {
        "items": len(by_item),
        "samples": samples,
        "k": k,
        "avg_at_k": sum(sum(v) / len(v) for v in by_item.values()) / max(len(by_item), 1),
        "pass_at_k": sum(max(v) for v in by_item.values()) / max(len(by_item), 1),
        "format": sum(formats) / len(formats) if formats else None,
        "mean_response_length": sum(r["response_length"] for r in rows) / max(samples, 1),
        "truncated": sum(r["finish_reason"] == "length" for r in rows) / max(samples, 1),
        "reward_errors": sum(1 for r in rows if "error" in r.get("reward_status", {}).values()),
        "reward_timeouts": sum(1 for r in rows if "timeout" in r.get("reward_status", {}).values()),
    }


def score_rows(label: str, scorer: str, options: dict[str, dict[str, Any]], samples: list[dict[str, Any]],
               tokenizer: Any, sandbox: Any) -> list[dict[str, Any]]:
    """Decode and score one eval set's samples; one output row per sample, in order."""
    from mindrl.rewards import build_reward_fn

    names = list(options)
    completions = tokenizer.batch_decode([s["token_ids"] for s in samples], skip_special_tokens=True)
    prompts: dict[int, str] = {}
    for s in samples:
        if s["index"] not in prompts:
            prompts[s["index"]] = tokenizer.decode(s["prompt_ids"])
    reward_fn = build_reward_fn(names, [1.0] + [0.0] * (len(names) - 1), options, sandbox=sandbox)
    scored = reward_fn(completions, [s["labels"] for s in samples], [len(s["token_ids"]) for s in samples])
    rows = []
    for i, (s, text) in enumerate(zip(samples, completions)):
        row = {"dataset": label, "index": s["index"], "row": s["row"], "sample": s["sample"],
               "prompt": prompts[s["index"]], "completion": text, "labels": s["labels"],
               "reward": scored.parts[scorer][i], "reward_parts": {n: scored.parts[n][i] for n in names},
               "finish_reason": s["finish_reason"], "stop_reason": s["stop_reason"],
               "response_length": len(s["token_ids"]), "prompt_length": len(s["prompt_ids"])}
        status = {n: STATUS[scored.status[n][i]] for n in names if scored.status[n][i] in STATUS}
        if status:
            row["reward_status"] = status
        rows.append(row)
    if scored.error_messages:
        print(f"[eval] {label}: scorer errors, e.g. {scored.error_messages[:2]}", flush=True)
    return rows


def score_and_write(plan: EvalPlan, generations: dict[str, dict[str, Any]], tokenizer: Any) -> dict[str, Any]:
    """Score every eval set, write LABEL.jsonl and summary.json, print the table; returns the summary."""
    from mindrl.rewards import RewardSandbox

    out = Path(plan.output)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": plan.model, "model_kind": plan.model_kind, "tokenizer": plan.tokenizer,
        "layout": {"tp": plan.tp, "pp": plan.pp, "ep": plan.ep, "nproc": plan.nproc, "backend": plan.backend},
        "sampling": {"temperature": plan.temperature, "top_p": plan.top_p, "top_k": plan.top_k,
                     "max_tokens": plan.max_tokens, "seed": plan.seed},
        "datasets": {},
    }
    with RewardSandbox(num_workers=plan.reward_workers, timeout=plan.reward_timeout) as sandbox:
        for ds in plan.datasets:
            t0 = time.perf_counter()
            rows = score_rows(ds.label, ds.scorer, ds.options, generations[ds.label]["samples"], tokenizer, sandbox)
            path = out / f"{ds.label}.jsonl"
            atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            entry = summarize(rows)
            entry.update(scorer=ds.scorer, scorer_options=ds.options, n=ds.n, source=ds.source, prompt_set=ds.prefix,
                         stop=ds.stop, stop_token_ids=ds.stop_token_ids, jsonl=str(path),
                         generation_s=round(generations[ds.label]["seconds"], 3),
                         scoring_s=round(time.perf_counter() - t0, 3))
            summary["datasets"][ds.label] = entry
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print_table(summary)
    print(f"[eval] wrote {out}/summary.json and {', '.join(ds.label + '.jsonl' for ds in plan.datasets)}", flush=True)
    return summary


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mindrl eval: {summary['model']}", title_justify="left")
    for col in ("dataset", "scorer", "items", "k", "avg@k %", "pass@k %", "format %", "mean len", "truncated %",
                "gen s"):
        table.add_column(col, justify="left" if col in ("dataset", "scorer") else "right")
    for label, d in summary["datasets"].items():
        table.add_row(label, d["scorer"], str(d["items"]), str(d["k"]), _pct(d["avg_at_k"]), _pct(d["pass_at_k"]),
                      _pct(d["format"]), f"{d['mean_response_length']:.1f}", _pct(d["truncated"]),
                      f"{d['generation_s']:.1f}")
    console = Console()
    (console if console.is_terminal else Console(width=160)).print(table)
