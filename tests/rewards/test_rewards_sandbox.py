"""The sandbox: order, timeouts (soft and hard), exceptions, crashes, NaN, threads, recovery."""
from __future__ import annotations

import threading
import time

import pytest

from mindrl.rewards.sandbox import ERROR, OK, TIMEOUT, RewardSandbox
from tests.rewards import scorers_for_tests as S

TIMEOUT_S = 0.3  # CPU seconds per evaluation
WALL_S = 30.0  # far above any CPU-bound case here, so those can only end by the CPU-time checks
FALLBACK = -1.0  # not a value any test scorer returns, so a fallback cannot pass for a real result


@pytest.fixture(scope="module")
def box():
    with RewardSandbox(num_workers=2, timeout=TIMEOUT_S, wall_timeout=WALL_S, fallback=FALLBACK) as sandbox:
        yield sandbox


def rows(completions: list[str]) -> tuple[list[str], list[dict]]:
    return completions, [{"x": i} for i in range(len(completions))]


def test_results_in_order_for_every_scorer(box):
    comps, labels = rows([f"c{i}" * (i % 7) for i in range(203)])
    res = box.score([S.echo, (S.length, {"scale": 0.5})], comps, labels)
    assert res.values == [[float(i), len(c) * 0.5] for i, c in enumerate(comps)]
    assert res.status == [[OK, OK]] * 203
    assert (res.timeouts, res.errors) == (0, 0)


def test_empty_batch(box):
    res = box.score([S.echo], [], [])
    assert res.values == [] and res.status == []


def test_cpu_timeout_gives_fallback_and_the_worker_carries_on(box):
    restarts = box.totals["worker_restarts"]
    comps, labels = rows(["a", "spin", "b", "spin", "c"])
    t0 = time.monotonic()
    res = box.score([S.spin], comps, labels)
    elapsed = time.monotonic() - t0
    assert [v[0] for v in res.values] == [0.0, FALLBACK, 2.0, FALLBACK, 4.0]
    assert [s[0] for s in res.status] == [OK, TIMEOUT, OK, TIMEOUT, OK]
    assert (res.timeouts, res.errors) == (2, 0)
    assert box.totals["worker_restarts"] == restarts  # stopped by the worker's own timer, not a kill
    assert elapsed < WALL_S / 2  # the loops were infinite
    again = box.score([S.echo], *rows(["x", "y"]))  # the worker is healthy afterwards
    assert again.values == [[0.0], [1.0]]


def check_killed_and_replaced(sandbox: RewardSandbox, scorer, trigger: str) -> float:
    restarts = sandbox.totals["worker_restarts"]
    comps, labels = rows(["a", trigger, "b", "c", "d", "e"])
    t0 = time.monotonic()
    res = sandbox.score([scorer], comps, labels)
    elapsed = time.monotonic() - t0
    assert [v[0] for v in res.values] == [0.0, FALLBACK, 2.0, 3.0, 4.0, 5.0]
    assert res.status[1] == [TIMEOUT] and res.timeouts == 1 and res.errors == 0
    assert sandbox.totals["worker_restarts"] == restarts + 1
    again = sandbox.score([S.echo], *rows(["x"] * 40))  # the replacement works
    assert [v[0] for v in again.values] == [float(i) for i in range(40)]
    return elapsed


@pytest.mark.parametrize("scorer,trigger", [
    (S.busy_c_loop, "busy"),  # inside one long C call: the signal handler cannot run
    (S.swallows, "swallow"),  # catches the timeout exception and goes on
    (S.masks_timer, "mask"),  # blocks the timer signal
])
def test_cpu_hog_that_ignores_the_timer_is_killed(box, scorer, trigger):
    # Killed once it used timeout + 0.5 CPU seconds, long before the 30 s wall deadline.
    assert check_killed_and_replaced(box, scorer, trigger) < WALL_S / 2


def test_blocked_evaluation_is_killed_at_the_wall_deadline():
    with RewardSandbox(num_workers=2, timeout=TIMEOUT_S, wall_timeout=1.0, fallback=FALLBACK) as sandbox:
        elapsed = check_killed_and_replaced(sandbox, S.sleepy, "sleep")  # sleeps 60 s using no CPU
    assert 1.0 <= elapsed < 10.0


def test_exception_is_isolated_and_reported(box):
    comps, labels = rows(["a", "raise", "b"])
    res = box.score([S.raises], comps, labels)
    assert [v[0] for v in res.values] == [0.0, FALLBACK, 2.0]
    assert [s[0] for s in res.status] == [OK, ERROR, OK]
    assert (res.timeouts, res.errors) == (0, 1)
    assert res.error_messages == ["raises: RuntimeError: scorer bug"]


def test_crash_is_isolated(box):
    restarts = box.totals["worker_restarts"]
    comps, labels = rows(["a", "b", "crash", "c", "d"])
    res = box.score([S.crashes, S.echo], comps, labels)
    assert res.values == [[0.0, 0.0], [1.0, 1.0], [FALLBACK, 2.0], [3.0, 3.0], [4.0, 4.0]]
    assert res.status[2] == [ERROR, OK] and res.errors == 1
    assert "worker crashed (exit code 3)" in res.error_messages[0]
    assert box.totals["worker_restarts"] == restarts + 1


def test_memory_hog_hits_the_worker_limit_not_the_machine(box):
    res = box.score([S.hog_memory], *rows(["hog", "ok"]))
    assert res.status == [[ERROR], [OK]] and res.values == [[FALLBACK], [1.0]]
    assert "MemoryError" in res.error_messages[0]


def test_non_finite_reward_is_an_error(box):
    res = box.score([S.nan], *rows(["nan", "ok"]))
    assert res.status == [[ERROR], [OK]] and res.values == [[FALLBACK], [1.0]]


def test_works_from_a_non_main_thread(box):
    out = {}

    def worker():
        out["res"] = box.score([S.spin, S.busy_c_loop], *rows(["a", "spin", "busy"]))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(timeout=WALL_S)
    assert not thread.is_alive()
    assert out["res"].status == [[OK, OK], [TIMEOUT, OK], [OK, TIMEOUT]]
    assert out["res"].values == [[0.0, 0.0], [FALLBACK, 1.0], [2.0, FALLBACK]]


def test_concurrent_callers_get_their_own_results(box):
    results = {}

    def call(k: int):
        results[k] = box.score([S.echo], ["c"] * 50, [{"x": k * 1000 + i} for i in range(50)])

    threads = [threading.Thread(target=call, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    for k in range(3):
        assert [v[0] for v in results[k].values] == [float(k * 1000 + i) for i in range(50)]


def test_rejects_unpicklable_scorers_and_mismatched_rows(box):
    with pytest.raises(TypeError, match="module-level"):
        box.score([lambda c, l: 1.0], ["a"], [{}])
    with pytest.raises(ValueError, match="2 completions but 1 label rows"):
        box.score([S.echo], ["a", "b"], [{"x": 1}])


def test_closed_sandbox_refuses_work():
    sandbox = RewardSandbox(num_workers=1)
    pids = [w.proc.pid for w in sandbox._workers]
    sandbox.close()
    assert all(not w.proc.is_alive() for w in sandbox._workers) and pids
    with pytest.raises(RuntimeError, match="closed"):
        sandbox.score([S.echo], ["a"], [{"x": 1}])
