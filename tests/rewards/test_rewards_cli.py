"""``python -m mindrl.rewards.score``: output rows, summary, atomic write, and one-line input errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mindrl.rewards.score import main

REPO = Path(__file__).resolve().parents[2]

ROWS = [
    {"id": 0, "completion": "r</think>\n<answer>(1 + 2) * 3</answer>", "nums": [1, 2, 3], "target": 9},
    {"id": 1, "completion": "r</think>\n<answer>1 + 2 + 3</answer>", "nums": [1, 2, 3], "target": 9},
    {"id": 2, "completion": "<answer>(1 + 2) * 3</answer>", "nums": [1, 2, 3], "target": 9},
    {"id": 3, "completion": "r</think>\n<answer>2</answer>", "target": 9},  # no "nums": countdown errors
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_scores_rows_in_order(tmp_path, capsys):
    src = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    out = tmp_path / "scored.jsonl"
    out.write_text("old contents\n")
    rc = main(["--scorer", "format", "--scorer", "countdown", "--weights", "0.5,1.0",
               "--option", "format.prefix=<think>", "--input", str(src), "--output", str(out), "--workers", "2"])
    assert rc == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in scored] == [0, 1, 2, 3]
    assert [r["reward"] for r in scored] == [1.5, 0.5, 1.0, 0.5]
    assert [r["reward_parts"] for r in scored] == [{"format": 1.0, "countdown": 1.0}, {"format": 1.0, "countdown": 0.0},
                                                   {"format": 0.0, "countdown": 1.0}, {"format": 1.0, "countdown": 0.0}]
    assert "reward_status" not in scored[0] and scored[3]["reward_status"] == {"countdown": "error"}
    assert scored[0]["nums"] == [1, 2, 3] and scored[0]["completion"] == ROWS[0]["completion"]  # input kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl", "scored.jsonl"]  # no temp file left
    summary = capsys.readouterr().out
    assert "scored 4 rows with 0.5*format + 1*countdown" in summary
    assert "mean reward 0.8750, timeouts 0, errors 1" in summary
    assert "KeyError: 'nums'" in summary


def _error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1, err  # one line
    return err


@pytest.mark.parametrize("content,needle", [
    ('{"completion": "a"}\n{"completion": \n', "rows.jsonl:2: not valid JSON"),
    ('{"completion": "a"}\n\n{"label": "1"}\n', "rows.jsonl:3: no 'completion' field"),
    ('{"completion": 5}\n', "rows.jsonl:1: 'completion' is not a string"),
    ('[1, 2]\n', "rows.jsonl:1: expected a JSON object, got list"),
    ("\n\n", "no rows"),
])
def test_bad_rows(tmp_path, capsys, content, needle):
    src = tmp_path / "rows.jsonl"
    src.write_text(content)
    err = _error(capsys, ["--scorer", "format", "--input", str(src), "--output", str(tmp_path / "o.jsonl")])
    assert needle in err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("extra,needle", [
    (["--scorer", "formatt"], "Did you mean 'format'?"),
    (["--scorer", "format", "--scorer", "acc", "--weights", "1"], "--weights has 1 value(s) for 2 --scorer(s)"),
    (["--scorer", "format", "--weights", "x"], "comma-separated numbers"),
    (["--scorer", "format", "--option", "prefix=x"], "NAME.KEY=VALUE"),
    (["--scorer", "think_len", "--option", "think_len.min_char=5"], "Did you mean 'min_chars'?"),
    (["--scorer", "format", "--timeout", "0"], "--timeout must be > 0"),
])
def test_bad_arguments(tmp_path, capsys, extra, needle):
    src = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    err = _error(capsys, extra + ["--input", str(src), "--output", str(tmp_path / "o.jsonl")])
    assert needle in err


def test_missing_input_and_output_dir(tmp_path, capsys):
    err = _error(capsys, ["--scorer", "format", "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o")])
    assert "input file not found" in err
    src = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    err = _error(capsys, ["--scorer", "format", "--input", str(src), "--output", str(tmp_path / "no" / "o.jsonl")])
    assert "output directory does not exist" in err


def test_help_lists_scorers_and_fields():
    proc = subprocess.run([sys.executable, "-m", "mindrl.rewards.score", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for needle in ("--scorer", "--weights", "countdown", "'nums'", "reward_parts", "atomically"):
        assert needle in proc.stdout
