"""Weighted sums of scorers, built from config (MindSpeed-RL key names).

    reward:
      verifier_function: [format, countdown, think_len]
      verifier_weight: [1.0, 1.0, 1.0]
      verifier_options: {format: {prefix: "<think>"}, think_len: {prefix: "<think>", min_chars: 1000}}
      verifier_timeout: 1.0     # CPU seconds per item and scorer
      verifier_wall_timeout: 10 # optional: wall seconds before a blocked item's worker is killed
      verifier_parallel: 2      # worker processes
      verifier_fallback: 0.0    # a scorer's value on timeout or error

Every part is computed in the sandbox with its own timeout; the total is sum(weight * part).
"""
from __future__ import annotations

import difflib
import inspect
import pickle
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from mindrl.rewards.registry import get_scorer
from mindrl.rewards.sandbox import OK, TIMEOUT, RewardSandbox


@dataclass
class RewardOutput:
    total: list[float]  # per item: sum of weight * part
    parts: dict[str, list[float]]  # per scorer name: its per-item values (fallback where it failed)
    status: dict[str, list[int]]  # per scorer name: sandbox.OK / TIMEOUT / ERROR per item
    metrics: dict[str, float] = field(default_factory=dict)
    error_messages: list[str] = field(default_factory=list)


def _plain(obj: Any) -> Any:
    """OmegaConf/other containers -> plain dicts/lists, so options pickle and compare simply."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [_plain(v) for v in obj]
    return obj


def check_options(name: str, fn: Callable, options: Mapping[str, Any]) -> None:
    """Bind options to the scorer's keyword-only parameters now, not on the first rollout."""
    params = inspect.signature(fn).parameters
    valid = [p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY]
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"scorer {name!r} has no option {key!r}.{hint} Its options: {', '.join(valid) or 'none'}")
    missing = [p for p in valid if params[p].default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ValueError(f"scorer {name!r} needs option(s) {', '.join(missing)}")


@dataclass
class ScorerPlan:
    """Validated scorers of a weighted sum: names, functions, weights and per-scorer options."""

    names: list[str]
    scorers: list[Callable]
    weights: list[float]
    options: list[dict[str, Any]]


def resolve_scorers(verifier_function: Sequence[str | Callable], verifier_weight: Sequence[float] | None = None,
                    options: Mapping[str, Mapping[str, Any]] | None = None) -> ScorerPlan:
    """Check names, weights and options up front (ValueError/TypeError), without starting workers.

    ``verifier_function`` holds registry names (or module-level scorer functions); ``verifier_weight``
    defaults to all 1.0; ``options`` maps a scorer name to its keyword options.
    """
    entries = list(_plain(list(verifier_function)))
    if not entries:
        raise ValueError("verifier_function is empty: name at least one reward scorer")
    weights = [1.0] * len(entries) if verifier_weight is None else [float(w) for w in _plain(list(verifier_weight))]
    if len(weights) != len(entries):
        raise ValueError(f"verifier_weight has {len(weights)} entries for {len(entries)} verifier_function entries")
    names, fns = [], []
    for entry in entries:
        fn = entry if callable(entry) else get_scorer(str(entry))
        names.append(entry.__name__ if callable(entry) else str(entry))
        fns.append(fn)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"scorer(s) listed twice in verifier_function: {', '.join(dupes)}")
    options = _plain(dict(options or {}))
    unknown = [k for k in options if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"options given for {unknown[0]!r}, which is not in verifier_function {names}.{hint}")
    per_scorer = [dict(options.get(name) or {}) for name in names]
    for name, fn, opts in zip(names, fns, per_scorer):
        check_options(name, fn, opts)
        try:
            pickle.dumps((fn, opts))
        except Exception as exc:  # noqa: BLE001
            raise TypeError(f"scorer {name!r} must be a module-level function with picklable options: {exc}") from exc
    return ScorerPlan(names, fns, weights, per_scorer)


class RewardFunction:
    """``fn(completions, labels) -> RewardOutput``: the weighted sum of a plan's scorers, sandboxed."""

    def __init__(self, plan: ScorerPlan, sandbox: RewardSandbox, owns_sandbox: bool = False) -> None:
        self.plan = plan
        self.names, self.weights = plan.names, plan.weights
        self.sandbox = sandbox
        self._owns_sandbox = owns_sandbox

    def __call__(self, completions: Sequence[str], labels: Sequence[Mapping[str, Any]],
                 response_lengths: Sequence[int] | None = None) -> RewardOutput:
        """Score a batch. ``response_lengths`` (tokens per completion) feed ``overlong``."""
        if response_lengths is not None:
            if len(response_lengths) != len(labels):
                raise ValueError(f"{len(response_lengths)} response lengths for {len(labels)} rows")
            labels = [{**row, "response_length": int(n)} for row, n in zip(labels, response_lengths)]
        res = self.sandbox.score(list(zip(self.plan.scorers, self.plan.options)), completions, labels)
        parts = {name: [row[k] for row in res.values] for k, name in enumerate(self.names)}
        status = {name: [row[k] for row in res.status] for k, name in enumerate(self.names)}
        total = [sum(w * v for w, v in zip(self.weights, row)) for row in res.values]
        n = max(1, len(total))
        metrics = {"reward/mean": sum(total) / n}
        for name in self.names:
            metrics[f"reward/{name}/mean"] = sum(parts[name]) / n
            metrics[f"reward/{name}/timeouts"] = float(sum(s == TIMEOUT for s in status[name]))
            metrics[f"reward/{name}/errors"] = float(sum(s not in (OK, TIMEOUT) for s in status[name]))
        metrics["reward/timeouts"] = float(res.timeouts)
        metrics["reward/errors"] = float(res.errors)
        metrics["reward/time_s"] = res.elapsed_s
        metrics["reward/cpu_s"] = res.cpu_s
        return RewardOutput(total, parts, status, metrics, res.error_messages)

    def close(self) -> None:
        if self._owns_sandbox:
            self.sandbox.close()

    def __enter__(self) -> "RewardFunction":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def build_reward_fn(verifier_function: Sequence[str | Callable], verifier_weight: Sequence[float] | None = None,
                    options: Mapping[str, Mapping[str, Any]] | None = None, *, sandbox: RewardSandbox | None = None,
                    timeout: float = 1.0, num_workers: int | None = None, fallback: float = 0.0,
                    wall_timeout: float | None = None) -> RewardFunction:
    """Validate (``resolve_scorers``), then build a sandboxed weighted-sum reward.

    Pass ``sandbox`` to share one worker pool (the caller closes it); otherwise one is created from
    ``timeout`` (CPU s per item and scorer), ``num_workers``, ``fallback`` and ``wall_timeout`` (see
    ``RewardSandbox``) and closed with the RewardFunction.
    """
    plan = resolve_scorers(verifier_function, verifier_weight, options)
    if sandbox is not None:
        return RewardFunction(plan, sandbox, owns_sandbox=False)
    box = RewardSandbox(num_workers=num_workers, timeout=timeout, fallback=fallback, wall_timeout=wall_timeout)
    return RewardFunction(plan, box, owns_sandbox=True)


def build_reward_fn_from_config(cfg: Mapping[str, Any], sandbox: RewardSandbox | None = None) -> RewardFunction:
    """``build_reward_fn`` from a config mapping with the keys in this module's docstring."""
    known = {"verifier_function", "verifier_weight", "verifier_options", "verifier_timeout",
             "verifier_parallel", "verifier_fallback", "verifier_wall_timeout"}
    extra = [k for k in cfg if str(k).startswith("verifier_") and k not in known]
    if extra:
        raise ValueError(f"unknown reward config key(s) {extra}; known: {sorted(known)}")
    if "verifier_function" not in cfg:
        raise ValueError("reward config needs verifier_function (a list of scorer names)")
    return build_reward_fn(
        cfg["verifier_function"], cfg.get("verifier_weight"), cfg.get("verifier_options"), sandbox=sandbox,
        timeout=float(cfg.get("verifier_timeout", 1.0)), num_workers=cfg.get("verifier_parallel"),
        fallback=float(cfg.get("verifier_fallback", 0.0)), wall_timeout=cfg.get("verifier_wall_timeout"))
