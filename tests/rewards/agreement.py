"""Agreement of mindrl's ``acc`` and of plain math-verify with a human grader, on the same extraction.

    PYTHONPATH=. python -m tests.rewards.agreement            # the table, per kind of case
    PYTHONPATH=. python -m tests.rewards.agreement --math500  # also MATH-500 solutions, answer unboxed

"Plain math-verify with the same extraction" takes the answer text mindrl extracts
(``extract_prediction``: last ``\\boxed{}``, else last ``<answer>``, else the whole completion) and
the gold mindrl normalises (``normalize_gold``: no ``$``, boxed or ``####`` wrapper), and calls
``math_verify.verify(parse(gold), parse(pred))`` the way its README does: an expression (the gold, a
boxed answer) is parsed as ``$…$`` (falling back to ``\\boxed{…}`` when that finds nothing), an
``<answer>`` block or free text is parsed as it is (falling back to ``$…$``). Both run in-process
with math-verify's timeouts off; each item's CPU time is recorded (the sandbox's timeout is in CPU s).
"""
from __future__ import annotations

import argparse
import json
import os
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
        if r["kind"].startswith("MATH-500"):
            groups = [r["kind"]]
        else:
            groups = [r["kind"], "all"] + (["free text (all non-short kinds)"] if r["kind"] != "short" else [])
        for g in groups:
            out[g][0] += 1
            out[g][1] += r["mindrl"] == r["expected"]
            out[g][2] += r["plain"] == r["expected"]
    return {k: tuple(v) for k, v in out.items()}


def _unbox(text: str) -> str:
    """The solution with its last ``\\boxed{X}`` written as plain ``X``: the answer sits in a sentence."""
    cut = text.rfind("\\boxed{")
    if cut < 0:
        return text
    depth = 0
    for i in range(cut + len("\\boxed"), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[:cut] + text[cut + len("\\boxed{"):i] + text[i + 1:]
    return text


def math500_cases() -> list[tuple[str, object, int, str]]:
    """MATH-500's reference solutions with the final ``\\boxed{}`` removed, each against its own answer
    (all positives: measures how often the free-text extraction finds the answer in a real solution)."""
    shared = Path(os.environ.get("MINDRL_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    path = shared / "data" / "eval" / "math500.jsonl"
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    return [(_unbox(r["solution"]), r["answer"], 1, "MATH-500 solution, answer unboxed") for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--math500", action="store_true", help="also score MATH-500 solutions (needs ../shared)")
    args = parser.parse_args()
    warmup()  # what the sandbox's forkserver does before any item: imports and lazy parser caches
    rows = measure(CASES + (math500_cases() if args.math500 else []))
    print("| cases | n | mindrl agreement | plain math-verify, same extraction |")
    print("| --- | ---: | ---: | ---: |")
    for group, (n, ours, plain) in summarize(rows).items():
        print(f"| {group} | {n} | {100 * ours / n:.1f}% | {100 * plain / n:.1f}% |")
    print(f"\nslowest item (CPU s): mindrl {max(r['mindrl_s'] for r in rows):.3f} s, "
          f"plain {max(r['plain_s'] for r in rows):.3f} s")
    for r in rows:
        if r["kind"].startswith("MATH-500") and r["mindrl"] >= r["plain"]:
            continue  # only MATH-500 items where mindrl does worse than plain are listed
        if r["mindrl"] != r["expected"] or r["plain"] != r["expected"]:
            print(f"  expected {r['expected']:.0f} mindrl {r['mindrl']:.0f} plain {r['plain']:.0f} "
                  f"[{r['kind']}/{r['source']}] {r['completion'][-70:]!r} ~ {r['gold']!r}")


if __name__ == "__main__":
    main()
