"""The free-text fallback parses only the completion's tail: same verdicts, bounded cost."""
from __future__ import annotations

from mindrl.rewards import get_scorer
from mindrl.rewards.math_acc import text_tail


def test_tail_is_cut_at_a_line_boundary():
    text = "x" * 1000 + "\nline two $\\frac{1}{2}$\nso the answer is 7/2"
    tail = text_tail(text, keep=60)
    assert tail == "line two $\\frac{1}{2}$\nso the answer is 7/2"
    assert text_tail("short", keep=60) == "short"


def test_long_unformatted_completion_still_scored_on_its_last_answer():
    acc = get_scorer("acc")
    thought = "Let me think. " * 200  # ~2,800 characters of prose with no numbers
    assert acc(thought + "\nSo the answer is 7/2.", {"label": "\\frac{7}{2}"}) == 1.0
    assert acc(thought + "\nSo the answer is 5/2.", {"label": "\\frac{7}{2}"}) == 0.0
    # a number only far back in a truncated thought is not taken as the answer
    assert acc("The value is 42. " + thought, {"label": "42"}) == 0.0


def test_tail_reaches_back_to_an_answer_anchor():
    check = "\nLet me double-check: " + "6 + 7 = 13, and 13 - 7 = 6. " * 40  # ~1,100 characters, no "answer"
    text = "Work. " * 100 + "\nSo the answer is 42." + check
    assert text_tail(text).startswith("So the answer is 42.")
    acc = get_scorer("acc")
    assert acc(text, {"label": "42"}) == 1.0 and acc(text, {"label": "6"}) == 0.0
    # an anchor in the tail itself, or too far back, leaves the tail as it was
    assert text_tail("The answer is 1.\n" + "x" * 5000 + "\nend 2", keep=60) == "end 2"
    assert text_tail("x" * 1000 + "\nthe answer is 3\n" + "y" * 40, keep=60) == "the answer is 3\n" + "y" * 40


def test_pathological_long_answers_stay_fast():
    """Megabyte completions without line or sentence breaks, and huge <answer> blocks: the free-text
    path parses a bounded tail (before: 0.3-7 s of CPU per item, i.e. sandbox timeouts)."""
    import time

    acc = get_scorer("acc")
    acc("\\boxed{1}", {"label": "1"})  # imports outside the timing
    texts = ["is $x$ and +3 \\$5 $y.$ " * 50_000, "$" + "a" * 1_000_000, "is +1 " * 200_000, "\\[ x. \\] " * 100_000]
    for text in texts:
        for completion in (text, f"<answer>{text[:200_000]}</answer>", f"\\boxed{{{text[:200_000]}}}"):
            t0 = time.process_time()
            acc(completion + " So the answer is 7.", {"label": "7"})
            assert time.process_time() - t0 < 0.5, completion[:40]
    assert acc("x " * 300_000 + "so the answer is 7", {"label": "7"}) == 1.0
    assert text_tail("y" * 5000, keep=60) == "y" * 60  # no boundary at all: a hard cut
