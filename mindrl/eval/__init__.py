"""Evaluation: generate with the rollout engine from an HF or megatron checkpoint, score, report.

Owns `python -m mindrl.evaluate` (the CLI lives in `mindrl/evaluate.py`): resolving eval sets
(preprocessed prompt sets, or dataset configs run through `mindrl.data.preprocess` first), the
checks that run before any model is loaded (`plan.py`), the per-rank generation loop with weights
loaded from an HF directory or a megatron checkpoint at any layout (`runner.py`), and the metrics
(avg@k, pass@k, response length, truncation), per-item JSONL, `summary.json` and the printed
table (`report.py`). See docs/evaluate.md.

May import: backends, models, checkpoint, rollout, rewards, data, workers, utils (like the
trainer, it composes a model, a rollout engine, a prompt set and scorers), never trainer or cli.
"""
from mindrl.eval.plan import DatasetPlan, EvalError, EvalPlan
from mindrl.eval.report import summarize

__all__ = ["DatasetPlan", "EvalError", "EvalPlan", "summarize"]
