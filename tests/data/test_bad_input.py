"""Every kind of bad input gives a message saying what and where, and never touches an existing output."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mindrl.data import writer
from mindrl.data.errors import DataError
from mindrl.data.writer import output_paths
from tests.conftest import shared_path
from tests.data.conftest import run


@pytest.fixture(scope="module")
def existing(qwen_tok, tmp_path_factory):
    """A finished output that every bad run below targets; returns (prefix, snapshot function)."""
    out = tmp_path_factory.mktemp("existing")
    path = shared_path("data", "countdown", "countdown_test_1024.jsonl")
    _, prefix = run("countdown", qwen_tok, out / "cd", input=path, split="train[:64]")

    def snapshot() -> dict:
        files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.iterdir())}
        assert set(files) == {Path(v).name for k, v in output_paths(prefix).items() if k != "prompt"}, \
            f"stray files left behind: {sorted(files)}"
        return files

    return prefix, snapshot


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def expect(qwen_tok, existing, message: str, config: str = "countdown", **overrides):
    prefix, snapshot = existing
    before = snapshot()
    with pytest.raises(DataError, match=message) as info:
        run(config, qwen_tok, Path(prefix), **overrides)
    assert snapshot() == before
    return str(info.value)


def test_missing_input(qwen_tok, existing, tmp_path):
    expect(qwen_tok, existing, "does not exist", input=tmp_path / "nope.jsonl")
    expect(qwen_tok, existing, "holds no .jsonl / .json / .parquet / .csv files", input=tmp_path)
    expect(qwen_tok, existing, "unsupported file type '.txt'", input=write(tmp_path, "a.txt", "x"))


def test_unreadable_rows_are_named(qwen_tok, existing, tmp_path):
    lines = ['{"nums": [1, 2, 3], "target": 6}', '{"nums": [1, 2, 3], "target": 6}', '{"nums": [1, 2,',
             '{"nums": [1, 2, 3], "target": 6}', '[1, 2, 3]']
    msg = expect(qwen_tok, existing, "2 unreadable rows", input=write(tmp_path, "bad.jsonl", "\n".join(lines)))
    assert "lines 3, 5" in msg and "bad.jsonl" in msg and "expected a JSON object, got list" in msg
    msg = expect(qwen_tok, existing, "invalid JSON at line 2", input=write(tmp_path, "bad.json", '[\n{"a": }]'))
    msg = expect(qwen_tok, existing, "array items 1 are not JSON objects",
                 input=write(tmp_path, "items.json", '[{"nums": [1], "target": 1}, 5]'))
    msg = expect(qwen_tok, existing, "1 unreadable CSV rows",
                 input=write(tmp_path, "bad.csv", 'nums,target\n"[1, 2]",3\n"[1, 2]",3,9\n'))
    assert "line 3" in msg


def test_absent_map_keys_field_names_field_and_rows(qwen_tok, existing, tmp_path):
    rows = [{"nums": [1, 2, 3], "target": 6}, {"nums": [1, 2, 3]}, {"nums": [1, 2, 3], "target": None},
            {"nums": [1, 2, 3], "target": 6}]
    path = write(tmp_path, "rows.jsonl", "\n".join(json.dumps(r) for r in rows))
    msg = expect(qwen_tok, existing, "field 'target'", input=path)
    assert "map_keys.target" in msg and "2 of 4 rows (rows 1, 2)" in msg
    msg = expect(qwen_tok, existing, "field 'numbers'", input=path, **{"map_keys.nums": "numbers"})
    assert "Did you mean 'nums'" in msg and "4 of 4 rows" in msg
    assert "Did you mean" not in expect(qwen_tok, existing, "field 'target'", input=path)
    full = write(tmp_path, "full.jsonl", json.dumps(rows[0]))
    expect(qwen_tok, existing, "field 'extra' \\(dataset_additional_keys\\) is absent in 1 of 1 rows",
           input=full, dataset_additional_keys="[extra]")
    msg = expect(qwen_tok, existing, "needs map_keys for \\['prompt', 'answer'\\]", input=path,
                 handler_name="r1_math", prompt_type="qwen_r1")
    assert "map_keys.prompt=FIELD map_keys.answer=FIELD" in msg


def test_bad_values_are_rejected_by_the_handler(qwen_tok, existing, tmp_path):
    rows = [{"nums": [1, 2, 3], "target": 6}, {"nums": [1, 2, 3], "target": "six"}, {"nums": "1,2", "target": 3}]
    path = write(tmp_path, "vals.jsonl", "\n".join(json.dumps(r) for r in rows))
    msg = expect(qwen_tok, existing, "handler 'countdown' rejected 2 rows \\(rows 1, 2\\)", input=path)
    assert "target must be an integer, got 'six'" in msg


def test_unknown_template_and_handler(qwen_tok, existing):
    path = shared_path("data", "countdown", "countdown_test_1024.jsonl")
    expect(qwen_tok, existing, "unknown template \\(prompt_type\\) 'countdown_r2'. Did you mean 'countdown_r1'",
           input=path, prompt_type="countdown_r2")
    expect(qwen_tok, existing, "unknown handler \\(handler_name\\) 'countdwn'. Did you mean 'countdown'",
           input=path, handler_name="countdwn")
    # A countdown set with a math template would lose the numbers: refused up front.
    expect(qwen_tok, existing, "needs a template using", input=path, prompt_type="qwen_r1")


def test_nothing_left_after_filtering(qwen_tok, existing):
    path = shared_path("data", "countdown", "countdown_test_1024.jsonl")
    expect(qwen_tok, existing, "nothing left after filtering: all 1024 prompts are longer than seq_length=10",
           input=path, seq_length=10)
    expect(qwen_tok, existing, "has no rows", input=path, split="train[5:5]")


def test_failure_while_writing_leaves_the_old_output(qwen_tok, existing, monkeypatch):
    path = shared_path("data", "countdown", "countdown_test_1024.jsonl")
    real = json.dump

    def crash(*args, **kwargs):  # dies after .bin/.idx/labels are written, before the renames
        raise OSError("disk full")

    monkeypatch.setattr(writer.json, "dump", crash)
    prefix, snapshot = existing
    before = snapshot()
    with pytest.raises(OSError, match="disk full"):
        run("countdown", qwen_tok, Path(prefix), input=path)
    monkeypatch.setattr(writer.json, "dump", real)
    assert snapshot() == before
    assert not [p for p in os.listdir(Path(prefix).parent) if ".tmp-" in p]


def test_label_that_json_cannot_hold(qwen_tok, existing, tmp_path):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "dates.parquet"
    pq.write_table(pa.table({"nums": [[1, 2, 3]], "target": [6], "when": [datetime.date(2024, 1, 1)]}), path)
    expect(qwen_tok, existing, "row 0: a label cannot be stored as JSON", input=path,
           dataset_additional_keys="[when]")
