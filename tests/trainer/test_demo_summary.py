"""The tiny demo's verdict (`python -m mindrl.cli.summarize`) and its task data, on hand-made inputs.

Accuracy and format are judged separately: a run that learns only the tags (the failure mode of
issue 13) must say NOT LEARNED and exit 1, however much its total reward rose.
"""
from __future__ import annotations

import json
import random

import pytest

from mindrl.cli.prepare_tiny_demo import make_tasks, operands, split_triples, warm_completion
from mindrl.cli.summarize import main as summarize_main
from mindrl.trainer.tracking import Tracker


def write_run(path, acc: list[float], fmt: list[float]) -> None:
    t = Tracker(path)
    for step, (a, f) in enumerate(zip(acc, fmt), start=1):
        t.log(step, {"reward/mean": a + f, "reward/acc/mean": a, "reward/format/mean": f, "accuracy": a,
                     "response_length/mean": 35.0, "kl": 0.01})
    t.close()


def test_format_only_run_is_not_learned(tmp_path, capsys):
    # issue 13's numbers: format 0.52 -> 0.95, accuracy 0.041 -> 0.052; total reward +0.44
    write_run(tmp_path, [0.041] * 10 + [0.052] * 10, [0.52] * 10 + [0.95] * 10)
    assert summarize_main([str(tmp_path)]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("accuracy 0.041 -> 0.052, gain +0.011 (< 0.3): NOT LEARNED")
    assert "format 0.520 -> 0.950 (>= 0.9): WELL FORMED" in last


def test_accuracy_gain_is_learned_and_warm_start_is_reported(tmp_path, capsys):
    write_run(tmp_path, [0.30] * 10 + [0.55] * 5 + [0.70] * 10, [0.98] * 25)
    ws = tmp_path / "eval" / "warm_start"
    ws.mkdir(parents=True)
    (ws / "summary.json").write_text(json.dumps({"datasets": {"heldout": {"avg_at_k": 0.3125, "format": 0.99,
                                                                          "items": 100, "k": 8}}}))
    assert summarize_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "warm_start: accuracy 0.312 (avg@8 over 100 held-out prompts), format 0.990" in out
    assert out.strip().splitlines()[-1] == ("accuracy 0.300 -> 0.700, gain +0.400 (>= 0.3): LEARNED | "
                                            "format 0.980 -> 0.980 (>= 0.9): WELL FORMED")


def test_lost_format_fails_even_when_accuracy_rose(tmp_path, capsys):
    write_run(tmp_path, [0.3] * 10 + [0.8] * 10, [0.95] * 10 + [0.5] * 10)
    assert summarize_main([str(tmp_path)]) == 1
    assert "NOT WELL FORMED" in capsys.readouterr().out


def test_too_few_steps(tmp_path, capsys):
    write_run(tmp_path, [0.3] * 5, [1.0] * 5)
    assert summarize_main([str(tmp_path)]) == 1
    assert "only 5 steps logged" in capsys.readouterr().err


def test_held_out_prompts_are_never_trained_on():
    train, held_out = split_triples(0)
    assert len(held_out) == 100 and len(train) == 900 and not set(train) & set(held_out)
    tasks, evals = make_tasks(500, 0)
    assert {r["question"] for r in tasks}.isdisjoint(r["question"] for r in evals)
    assert evals[0]["question"] == f"max({','.join(map(str, held_out[0]))})=? <think>"
    assert evals[0]["answer"] == str(max(held_out[0]))


def test_warm_start_targets_do_not_depend_on_the_answer():
    """The warm-start answer is a blind pick among the operands: the largest is picked 1/3 of the time."""
    rng = random.Random(0)
    row = {"question": "max(3,8,5)=? <think>", "answer": "8"}
    picks = [warm_completion(row, rng) for _ in range(3000)]
    assert all(p.startswith(" 3 8 5 </think> <answer>") and p.endswith("</answer>") for p in picks)
    counts = {d: sum(p.endswith(f"<answer>{d}</answer>") for p in picks) for d in operands(row)}
    assert all(900 < c < 1100 for c in counts.values()), counts
    # the gold label is never read: a wrong label gives the same completions for the same seed
    rng_a, rng_b = random.Random(1), random.Random(1)
    assert ([warm_completion(row, rng_a) for _ in range(50)]
            == [warm_completion(dict(row, answer="0"), rng_b) for _ in range(50)])


@pytest.mark.slow
@pytest.mark.megatron
@pytest.mark.timeout(1800)  # ~3 min on 2 idle cores; shared cores have taken over 10
def test_short_demo_run_raises_accuracy(learning_demo, tmp_path):
    """The demo's own recipe, shortened to 30 GRPO steps: task accuracy (never format) already moves.

    The full demo (`bash examples/grpo/grpo_trainer_tiny.sh`, 150 steps) is a benchmark with its
    numbers in docs/grpo.md; this is its shorter check (~2-3 min on 2 idle cores)."""
    from tests.conftest import demo_train_cmd, run_cli

    proc = run_cli(demo_train_cmd(learning_demo, tmp_path, "megatron_training.train_iters=30",
                                  "megatron_training.save_interval=0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    acc = [r["accuracy"] for r in rows]
    first, last = sum(acc[:10]) / 10, sum(acc[-10:]) / 10
    assert last - first >= 0.15, (first, last, acc)
    assert sum(r["reward/format/mean"] for r in rows[-10:]) / 10 >= 0.9
