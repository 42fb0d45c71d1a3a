"""Agreement of mindrl's ``acc`` and of plain math-verify with a human grader, on the same extraction.

    PYTHONPATH=. python -m tests.rewards.agreement          # the table, per kind of case

"Plain math-verify with the same extraction" takes the answer text mindrl extracts
(``extract_prediction``: last ``\\boxed{}``, else last ``<answer>``, else the whole completion) and
the gold mindrl normalises (``normalize_gold``: no ``$``, boxed or ``####`` wrapper), and calls
``math_verify.verify(parse(gold), parse(pred))`` the way its README does: an expression (the gold, a
boxed answer) is parsed as ``$…$`` (falling back to ``\\boxed{…}`` when that finds nothing), an
``<answer>`` block or free text is parsed as it is (falling back to ``$…$``). Both run in-process
with math-verify's timeouts off; each item's CPU time is recorded (the sandbox's timeout is in CPU s).
"""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mindrl.rewards.math_acc import _mv, acc_reward, extract_prediction, normalize_gold, warmup  # noqa: E402
from tests.rewards.grader_cases import CASES  # noqa: E402


def _parse_first(*texts: str) -> list:
    mv = _mv()
    for text in texts:
        parsed = mv.parse(text, parsing_timeout=None)
        if parsed:
            return parsed
    return []


def plain_math_verify(completion: str, gold: object) -> float:
    """math-verify alone, on mindrl's extraction (see the module docstring)."""
    answer, source = extract_prediction(completion)
    gold_text = normalize_gold(gold)
    gold_parsed = _parse_first(f"${gold_text}$", f"\\boxed{{{gold_text}}}")
    if source == "boxed":
        pred_parsed = _parse_first(f"${answer}$", f"\\boxed{{{answer}}}")
    else:
        pred_parsed = _parse_first(answer, f"${answer}$")
    return float(_mv().verify(gold_parsed, pred_parsed, timeout_seconds=None))


def measure(cases=CASES) -> list[dict]:
    """One row per case: the expected verdict, mindrl's, plain math-verify's, and their times."""
    rows = []
    for completion, gold, expected, kind in cases:
        t0 = time.process_time()
        ours = acc_reward(completion, {"label": gold})
        t1 = time.process_time()
        plain = plain_math_verify(completion, gold)
        t2 = time.process_time()
        rows.append({"kind": kind, "source": extract_prediction(completion)[1], "expected": float(expected),
                     "mindrl": ours, "plain": plain, "mindrl_s": t1 - t0, "plain_s": t2 - t1,
                     "completion": completion, "gold": gold})
    return rows


def summarize(rows: list[dict]) -> dict[str, tuple[int, int, int]]:
    """{group: (cases, mindrl agreeing, plain agreeing)} per kind, plus 'free text' and 'all'."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in rows:
        groups = [r["kind"], "all"] + (["free text (all non-short kinds)"] if r["kind"] != "short" else [])
        for g in groups:
            out[g][0] += 1
            out[g][1] += r["mindrl"] == r["expected"]
            out[g][2] += r["plain"] == r["expected"]
    return {k: tuple(v) for k, v in out.items()}


def main() -> None:
    warmup()  # what the sandbox's forkserver does before any item: imports and lazy parser caches
    rows = measure()
    print("| cases | n | mindrl agreement | plain math-verify, same extraction |")
    print("| --- | ---: | ---: | ---: |")
    for group, (n, ours, plain) in summarize(rows).items():
        print(f"| {group} | {n} | {100 * ours / n:.1f}% | {100 * plain / n:.1f}% |")
    print(f"\nslowest item (CPU s): mindrl {max(r['mindrl_s'] for r in rows):.3f} s, "
          f"plain {max(r['plain_s'] for r in rows):.3f} s")
    for r in rows:
        if r["mindrl"] != r["expected"] or r["plain"] != r["expected"]:
            print(f"  expected {r['expected']:.0f} mindrl {r['mindrl']:.0f} plain {r['plain']:.0f} "
                  f"[{r['kind']}/{r['source']}] {r['completion'][-70:]!r} ~ {r['gold']!r}")


if __name__ == "__main__":
    main()
