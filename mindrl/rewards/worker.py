"""The reward worker process: runs (item, scorer) evaluations under a CPU-time limit, streams results.

Runs in its own process (see ``sandbox.py`` for the caller side and the protocol's reasons). The
scorer runs on this process's main thread, so a signal-based timer can interrupt Python code.
"""
from __future__ import annotations

import importlib
import math
import os
import signal
import time
import traceback
from typing import Any, Callable, Mapping

OK, TIMEOUT, ERROR = 0, 1, 2
STATUS_NAMES = {OK: "ok", TIMEOUT: "timeout", ERROR: "error"}

PRELOAD = ["mindrl.rewards._preload"]  # imported before the first task (and by the forkserver)
_FLUSH_AFTER_S = 0.05  # stream results early after an evaluation this slow


class _ItemTimeout(BaseException):
    """Raised by SIGPROF inside a worker. BaseException so that ``except Exception`` cannot catch it."""


_armed = False  # the timer raises only while an evaluation runs, never in the worker's own loop


def _on_timer(signum: int, frame: Any) -> None:
    if _armed:
        raise _ItemTimeout()


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when its parent process dies, even if it is stuck in C code."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_one(fn: Callable, opts: Mapping[str, Any], completion: str, labels: Mapping[str, Any],
             timeout: float) -> tuple[float | None, int, str | None]:
    global _armed
    try:
        _armed = True
        signal.setitimer(signal.ITIMER_PROF, timeout)
        try:
            value = fn(completion, labels, **opts)
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            _armed = False
        value = float(value)
        if not math.isfinite(value):  # a NaN reward would poison the whole batch's advantages
            raise ValueError(f"non-finite reward {value}")
        return value, OK, None
    except _ItemTimeout:
        return None, TIMEOUT, None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - isolating scorer bugs is the point
        return None, ERROR, f"{getattr(fn, '__name__', fn)}: {type(exc).__name__}: {exc}"[:500]


def worker_main(conn: Any, progress: Any, memory_limit_mb: int | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's business
    _die_with_parent()
    try:
        if memory_limit_mb:
            import resource

            limit = memory_limit_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        for module in PRELOAD:
            importlib.import_module(module)
    except BaseException:  # noqa: BLE001
        conn.send(("fatal", traceback.format_exc()))
        return
    signal.signal(signal.SIGPROF, _on_timer)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        call_id, lo, hi, item_lo, items, scorers, timeout = msg
        n_scorers = len(scorers)
        start, values, status, errors = lo, [], [], []
        cpu0 = time.process_time()
        for e in range(lo, hi):
            completion, labels = items[e // n_scorers - item_lo]
            fn, opts = scorers[e % n_scorers]
            progress[0] = e
            progress[2] = time.process_time()  # lets the caller see CPU stuck in C code, under any load
            t0 = progress[1] = time.monotonic()
            value, st, err = _run_one(fn, opts, completion, labels, timeout)
            progress[1] = 0.0
            values.append(value)
            status.append(st)
            if err is not None:
                errors.append(err)
            if e == hi - 1 or time.monotonic() - t0 > _FLUSH_AFTER_S:
                cpu = time.process_time()
                conn.send(("res", call_id, start, values, status, errors, cpu - cpu0))
                start, values, status, errors, cpu0 = e + 1, [], [], [], cpu
