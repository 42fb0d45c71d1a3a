"""A worker pool that runs scorers with a per-item timeout and crash isolation.

Why not multiprocessing.Pool / ProcessPoolExecutor: neither can kill one hung task and carry on
(Pool leaks the hung worker; a dead worker breaks the whole ProcessPoolExecutor). Why not
``signal.alarm`` in the caller: it only works on the main thread, and cannot stop C code (a huge
integer power, a regex) anyway. So:

* Each worker is a process with its own pipe. The caller (any thread) sends it a *task*: a
  contiguous range of (item, scorer) evaluations, never one process or message per item.
* Soft timeout, inside the worker: ``setitimer(ITIMER_PROF)`` before each evaluation raises a
  BaseException (so library ``except Exception`` blocks cannot swallow it) once the evaluation has
  used ``timeout`` seconds of *CPU*; it gets the fallback and the worker goes on. CPU time, not wall
  time, so that a busy machine does not turn slow-but-fine items into timeouts: the same rollout
  gets the same reward however loaded the node is.
* Hard timeout, in the caller: each worker writes (evaluation index, start time, its CPU time) to a
  shared array. An evaluation that has used half a timeout more CPU than allowed (stuck in C code
  that never returns to the interpreter, or swallowing the exception), or is still running
  ``wall_timeout`` seconds after it started (blocked or sleeping, so using no CPU), gets its worker
  SIGKILLed: the evaluation gets the fallback, the rest of the task is requeued and a replacement
  worker starts. A worker that dies (segfault, os._exit, OOM) is handled the same way.
* Results stream back per task, and also right after any slow evaluation, so a kill loses at most
  a few fast evaluations, which are simply rerun.

Workers come from a forkserver that has already imported and warmed up the scorers, so starting
or replacing one costs milliseconds and is safe from a multi-threaded trainer (no plain fork).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import pickle
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_connections
from typing import Any, Callable, Mapping, Sequence

from mindrl.rewards.worker import ERROR, OK, PRELOAD, STATUS_NAMES, TIMEOUT, worker_main

__all__ = ["RewardSandbox", "SandboxResult", "OK", "TIMEOUT", "ERROR", "STATUS_NAMES"]

_POLL_S = 0.05  # how often the caller checks for hung workers
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc; -inf where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("-inf")


@dataclass
class SandboxResult:
    """Per-item, per-scorer results of one ``RewardSandbox.score`` call."""

    values: list[list[float]]  # [item][scorer]; the fallback where status is not OK
    status: list[list[int]]  # OK / TIMEOUT / ERROR
    timeouts: int = 0
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)  # the first few, for logs
    elapsed_s: float = 0.0  # wall time of the call
    cpu_s: float = 0.0  # CPU time the workers reported for it (not counting killed evaluations)


@dataclass
class _Task:
    lo: int  # flat evaluation indices [lo, hi): evaluation e is item e // K, scorer e % K
    hi: int
    next: int = -1  # first evaluation whose result has not arrived
    retries: int = 0

    def __post_init__(self) -> None:
        if self.next < 0:
            self.next = self.lo


class _Worker:
    def __init__(self, ctx: Any, memory_limit_mb: int | None) -> None:
        # [evaluation index, its start (monotonic s) or 0 between evaluations, worker CPU s at its start]
        self.progress = ctx.RawArray("d", 3)
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=worker_main, args=(child, self.progress, memory_limit_mb),
                                daemon=True, name="mindrl-reward-worker")
        self.proc.start()
        child.close()
        self.born = time.monotonic()
        self.ready = False
        self.task: _Task | None = None

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


def _shutdown(workers: list[_Worker]) -> None:
    for w in workers:
        try:
            w.conn.send(None)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 2.0
    for w in workers:
        w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
        w.kill()


class RewardSandbox:
    """Runs scorers in ``num_workers`` processes with a per-item ``timeout``.

    ``timeout``: CPU seconds one evaluation (one item, one scorer) may use; the worker interrupts it
    then, or, if that cannot work (C code), the caller kills the worker once it has used
    ``timeout + max(0.5, timeout / 2)`` CPU seconds on it. ``wall_timeout``: wall seconds after which
    an evaluation is killed even without using CPU, e.g. blocked or sleeping (default
    ``max(10 * timeout, 10)``: generous, so that a heavily loaded machine never triggers it).

    Timeouts and exceptions give ``fallback`` and are counted; nothing a scorer does can hang or kill
    the caller. Thread-safe (calls are serialised) and usable from any thread. Close it (or use it as
    a context manager) to stop the workers; they also exit when the caller's process dies.
    """

    def __init__(self, num_workers: int | None = None, timeout: float = 1.0, fallback: float = 0.0, *,
                 start_method: str | None = None, max_chunk: int = 512, wall_timeout: float | None = None,
                 memory_limit_mb: int | None = 4096, startup_timeout: float = 120.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.num_workers = max(1, num_workers if num_workers is not None else min(8, os.cpu_count() or 1))
        self.timeout = float(timeout)
        self.fallback = float(fallback)
        self.max_chunk = max(1, max_chunk)
        self.cpu_kill_s = self.timeout + max(0.5, self.timeout / 2)
        wall = float(wall_timeout) if wall_timeout else max(10 * self.timeout, 10.0)
        self.wall_timeout = max(wall, self.timeout)
        self.memory_limit_mb = memory_limit_mb
        self.startup_timeout = startup_timeout
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self._ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            # Global to this process's forkserver; only takes effect if we are the first to start it.
            self._ctx.set_forkserver_preload(PRELOAD)
        self._lock = threading.Lock()
        self._call_id = 0
        self._workers = [_Worker(self._ctx, memory_limit_mb) for _ in range(self.num_workers)]
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        self.totals = {"evaluations": 0, "timeouts": 0, "errors": 0, "worker_restarts": 0}

    # -- public API

    def score(self, scorers: Sequence[Callable | tuple[Callable, Mapping[str, Any]]], completions: Sequence[str],
              labels: Sequence[Mapping[str, Any]]) -> SandboxResult:
        """Score every completion with every scorer. ``scorers``: functions or (function, options) pairs."""
        if len(completions) != len(labels):
            raise ValueError(f"{len(completions)} completions but {len(labels)} label rows")
        specs = [(s, {}) if callable(s) else (s[0], dict(s[1])) for s in scorers]
        try:
            pickle.dumps(specs)
        except Exception as exc:  # noqa: BLE001
            raise TypeError(f"scorers must be module-level functions with picklable options: {exc}") from exc
        with self._lock:
            if not self._finalizer.alive:
                raise RuntimeError("RewardSandbox is closed")
            return self._score(specs, list(completions), list(labels))

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "RewardSandbox":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals

    def _score(self, specs: list, completions: list[str], labels: list) -> SandboxResult:
        t_start = time.monotonic()
        n_scorers, n_items = len(specs), len(completions)
        total = n_scorers * n_items
        values = [self.fallback] * total
        status = [OK] * total
        result = SandboxResult(values=[], status=[])
        if total:
            self._call_id += 1
            chunk = max(1, min(self.max_chunk, math.ceil(total / (4 * self.num_workers))))
            queue = deque(_Task(lo, min(lo + chunk, total)) for lo in range(0, total, chunk))
            run = _Run(self, self._call_id, specs, completions, labels, values, status, result, queue)
            try:
                run.loop(total)
            except BaseException:
                # Leave no worker holding a half-done task whose results would leak into the next call.
                for i, w in enumerate(self._workers):
                    if w.task is not None:
                        self._replace(i)
                raise
        result.values = [values[i * n_scorers:(i + 1) * n_scorers] for i in range(n_items)]
        result.status = [status[i * n_scorers:(i + 1) * n_scorers] for i in range(n_items)]
        result.elapsed_s = time.monotonic() - t_start
        self.totals["evaluations"] += total
        self.totals["timeouts"] += result.timeouts
        self.totals["errors"] += result.errors
        return result

    def _replace(self, index: int) -> None:
        self._workers[index].kill()
        self._workers[index] = _Worker(self._ctx, self.memory_limit_mb)
        self.totals["worker_restarts"] += 1


class _Run:
    """The caller-side state of one ``score`` call: dispatch tasks, collect results, police workers."""

    def __init__(self, box: RewardSandbox, call_id: int, specs: list, completions: list[str], labels: list,
                 values: list, status: list, result: SandboxResult, queue: deque) -> None:
        self.box, self.call_id, self.specs = box, call_id, specs
        self.completions, self.labels = completions, labels
        self.values, self.status, self.result, self.queue = values, status, result, queue
        self.remaining = 0

    def loop(self, total: int) -> None:
        self.remaining = total
        box = self.box
        while self.remaining > 0:
            for i, w in enumerate(box._workers):
                # Only ready workers: a send to one still starting up could block on a full pipe.
                if w.ready and w.task is None and self.queue:
                    self._dispatch(i, self.queue.popleft())
            busy = [w for w in box._workers if w.task is not None or not w.ready]
            if not busy and not self.queue:
                raise RuntimeError(f"reward sandbox lost track of {self.remaining} evaluations")  # a bug
            wait_connections([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=_POLL_S)
            for i in range(len(box._workers)):
                self._check(i)

    def _dispatch(self, i: int, task: _Task) -> None:
        w, k = self.box._workers[i], len(self.specs)
        item_lo, item_hi = task.next // k, (task.hi - 1) // k + 1
        items = list(zip(self.completions[item_lo:item_hi], self.labels[item_lo:item_hi]))
        try:
            w.conn.send((self.call_id, task.next, task.hi, item_lo, items, self.specs, self.box.timeout))
            w.task = task
        except (OSError, ValueError):  # died while idle: _check replaces it
            self.queue.appendleft(task)
            w.task = None

    def _drain(self, w: _Worker) -> bool:
        """Read every waiting message; False if the pipe is closed (the worker is gone)."""
        try:
            while w.conn.poll():
                self._handle(w, w.conn.recv())
        except (EOFError, OSError):
            return False
        return True

    def _handle(self, w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            w.ready = True
        elif kind == "fatal":
            raise RuntimeError(f"reward worker failed to start:\n{msg[1]}")
        elif kind == "res" and msg[1] == self.call_id and w.task is not None:
            _, _, start, vals, stats, errs, cpu = msg
            self.result.cpu_s += cpu
            for j, (v, st) in enumerate(zip(vals, stats)):
                self._record(start + j, v, st)
            for err in errs:
                self._error_message(err)
            w.task.next = start + len(vals)
            if w.task.next >= w.task.hi:
                w.task = None

    def _record(self, e: int, value: float | None, st: int) -> None:
        self.status[e] = st
        if st == OK:
            self.values[e] = value
        elif st == TIMEOUT:
            self.result.timeouts += 1
        else:
            self.result.errors += 1
        self.remaining -= 1

    def _error_message(self, msg: str) -> None:
        if len(self.result.error_messages) < 10:
            self.result.error_messages.append(msg)

    def _check(self, i: int) -> None:
        box = self.box
        w = box._workers[i]
        alive = self._drain(w) and w.proc.is_alive()
        if not w.ready:
            if not alive:
                w.proc.join(timeout=1)
                raise RuntimeError(f"reward worker died during start-up (exit code {w.proc.exitcode}); if this "
                                   "is a script, is its entry point guarded by `if __name__ == '__main__':`?")
            if time.monotonic() - w.born > box.startup_timeout:
                raise RuntimeError(f"reward worker not ready after {box.startup_timeout:.0f} s")
            return
        if not alive:
            w.proc.join(timeout=1.0)  # its pipe closed: it is exiting; let it finish to read the exit code
            self._fail(i, ERROR, "worker crashed")
            return
        started = w.progress[1]
        if w.task is None or started <= 0:
            return
        elapsed = time.monotonic() - started
        if elapsed > box.wall_timeout:
            self._fail(i, TIMEOUT, None)
        # Read its CPU time only once the wall clock says it could be over (CPU time <= wall time).
        elif elapsed > box.cpu_kill_s and _cpu_s(w.proc.pid) - w.progress[2] > box.cpu_kill_s:
            self._fail(i, TIMEOUT, None)

    def _fail(self, i: int, st: int, why: str | None) -> None:
        """Kill worker i, blame the evaluation it was running, requeue the rest of its task, replace it."""
        box = self.box
        w = box._workers[i]
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(timeout=5)
        self._drain(w)  # results it sent before dying still count
        task, w.task = w.task, None
        culprit = int(w.progress[0]) if w.progress[1] > 0 else -1
        box._replace(i)
        if task is None:
            return
        if not task.next <= culprit < task.hi:
            # Died between evaluations: rerun, but never forever.
            task.retries += 1
            if task.retries <= 2:
                self.queue.appendleft(task)
                return
            culprit = task.next
        self._record(culprit, None, st)
        if why is not None:
            name = getattr(self.specs[culprit % len(self.specs)][0], "__name__", "?")
            self._error_message(f"{name}: {why} (exit code {w.proc.exitcode})")
        for lo, hi in ((culprit + 1, task.hi), (task.next, culprit)):
            if lo < hi:
                self.queue.appendleft(_Task(lo, hi))
