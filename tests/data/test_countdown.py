"""The Countdown generator: every task is solvable (checked by an independent brute-force solver),
stored solutions are right, output is deterministic by seed, and the CLI writes the file."""
from __future__ import annotations

import ast
import collections
import json
import subprocess
import sys
from fractions import Fraction
from functools import lru_cache

from mindrl.data.countdown import generate
from tests.conftest import REPO, shared_path


@lru_cache(maxsize=None)
def reachable(nums: tuple[Fraction, ...]) -> frozenset[Fraction]:
    """Every value an expression using each of `nums` exactly once can take (+ - * /, any brackets)."""
    if len(nums) == 1:
        return frozenset(nums)
    out = set()
    n = len(nums)
    for mask in range(1, (1 << n) - 1):  # every split into two non-empty groups
        left = tuple(sorted(nums[i] for i in range(n) if mask >> i & 1))
        right = tuple(sorted(nums[i] for i in range(n) if not mask >> i & 1))
        for a in reachable(left):
            for b in reachable(right):
                out.update((a + b, a - b, a * b))
                if b != 0:
                    out.add(a / b)
    return frozenset(out)


def solvable(nums: list[int], target: int) -> bool:
    """Is `target` reachable? The last operation is inverted instead of enumerated, which is fast."""
    t, nums = Fraction(target), [Fraction(n) for n in nums]
    if len(nums) == 1:
        return nums[0] == t
    n = len(nums)
    for mask in range(1, (1 << n) - 1):
        right = reachable(tuple(sorted(nums[i] for i in range(n) if not mask >> i & 1)))
        for a in reachable(tuple(sorted(nums[i] for i in range(n) if mask >> i & 1))):
            # a + b, a - b, a * b, a / b == t  <=>  b == t - a, a - t, t / a, a / t
            needed = [t - a, a - t] + ([t / a] if a else []) + ([a / t] if t else [])
            if any(b in right for b in needed) or (a == 0 and t == 0 and right):
                return True
    return False


def evaluate(expr: str) -> tuple[Fraction, list[int]]:
    """Exact value of an arithmetic expression and the numbers it uses (ast walk, no eval)."""
    used = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp):
            a, b = walk(node.left), walk(node.right)
            ops = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}
            return ops[type(node.op)] if type(node.op) in ops else a / b
        raise AssertionError(f"unexpected node {ast.dump(node)}")

    return walk(ast.parse(expr, mode="eval").body), used


def test_solver_itself():
    assert solvable([44, 19, 35], 98) and solvable([1, 2, 3, 4], 24) and solvable([3, 3, 8, 8], 24)  # 8/(3-8/3)
    assert not solvable([1, 1, 1], 100) and not solvable([2, 2], 5)
    assert solvable([7, 2, 4], 14) and solvable([5, 5, 5, 1], 24)  # 7 / 2 * 4, (5 - 1 / 5) * 5
    for nums in ([3, 8], [2, 5, 7], [6, 1, 9, 4]):  # agrees with enumerating every value
        values = reachable(tuple(sorted(Fraction(n) for n in nums)))
        for target in range(-20, 120):
            assert solvable(nums, target) == (Fraction(target) in values), (nums, target)
    # The public Countdown rows are solvable too (a sample, to keep this fast).
    rows = [json.loads(line) for line in shared_path("data", "countdown", "countdown_test_1024.jsonl")
            .read_text().splitlines()[:100]]
    assert all(solvable(r["nums"], r["target"]) for r in rows)


def test_every_generated_task_is_solvable():
    tasks = generate(400, seed=0)
    assert all(solvable(t["nums"], t["target"]) for t in tasks)
    for t in tasks:
        value, used = evaluate(t["solution"])
        assert value == t["target"] and sorted(used) == sorted(t["nums"]), t
        assert 3 <= len(t["nums"]) <= 4 and all(1 <= n <= 99 for n in t["nums"]) and 10 <= t["target"] <= 100
    sizes = collections.Counter(len(t["nums"]) for t in tasks)
    assert 160 < sizes[3] < 240  # about half and half, like Countdown-Tasks-3to4
    assert len({(tuple(t["nums"]), t["target"]) for t in tasks}) > 390


def test_deterministic_by_seed_and_options():
    assert generate(50, seed=1) == generate(50, seed=1)
    assert generate(50, seed=1) != generate(50, seed=2)
    small = generate(100, seed=3, min_nums=4, max_nums=4, max_number=10, min_target=1, max_target=20)
    assert all(len(t["nums"]) == 4 and max(t["nums"]) <= 10 and 1 <= t["target"] <= 20 for t in small)
    assert all(solvable(t["nums"], t["target"]) for t in small)


def test_cli_writes_jsonl(tmp_path):
    out = tmp_path / "sub" / "tasks.jsonl"
    cmd = [sys.executable, "-m", "mindrl.data.countdown", "--num", "40", "--seed", "0", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == generate(40, seed=0)
    assert not [p for p in out.parent.iterdir() if p != out]
