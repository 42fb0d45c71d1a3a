"""Raw rows from json / jsonl / parquet / csv files, a directory of them, or a HF hub id.

Local files are read with the standard library (json, csv) and pyarrow (parquet; it comes with
`datasets`) rather than `datasets.load_dataset`, because that copies everything into an Arrow cache
first, which costs more than the whole preprocessing of a 40K-row file, and because reading line by
line lets a bad row be reported by its line number.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from mindrl.data.errors import DataError, preview

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_SLICE = re.compile(r"^(?P<name>[\w.-]*)\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\]$")


def _bad_rows(path: Path, bad: list[tuple[int, str]], what: str) -> DataError:
    lines = [n for n, _ in bad]
    first = "; ".join(f"line {n}: {msg}" for n, msg in bad[:3])
    return DataError(f"{path}: {len(bad)} unreadable {what} (lines {preview(lines)}): {first}")


def _read_jsonl(path: Path, text: str) -> list[dict]:
    rows, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            bad.append((number, f"invalid JSON ({err.msg} at column {err.colno})"))
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad.append((number, f"expected a JSON object, got {type(row).__name__}"))
    if bad:
        raise _bad_rows(path, bad, "rows")
    return rows


def _read_json(path: Path, text: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several objects: JSON Lines under a .json name
            return _read_jsonl(path, text)
        raise DataError(f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    bad = [i for i, row in enumerate(data) if not isinstance(row, dict)]
    if bad:
        raise DataError(f"{path}: {len(bad)} unreadable rows: array items {preview(bad)} are not JSON objects "
                        f"(item {bad[0]} is {type(data[bad[0]]).__name__})")
    return data


def _read_csv(path: Path) -> list[dict]:
    rows, bad = [], []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            # DictReader puts surplus fields under None and fills missing ones with None.
            if None in row or any(v is None for v in row.values()):
                bad.append((reader.line_num, f"{len(row) - (None in row)} fields expected, "
                                             f"the row has a different number"))
                continue
            rows.append(row)
    if bad:
        raise _bad_rows(path, bad, "CSV rows")
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq  # a dependency of `datasets`

    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError subclasses
        raise DataError(f"{path}: cannot read parquet: {err}") from None


def read_file(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return _read_parquet(path)
    if path.suffix == ".csv":
        return _read_csv(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    return _read_jsonl(path, text) if path.suffix == ".jsonl" else _read_json(path, text)


def _looks_local(name: str) -> bool:
    # A hub id is "org/name"; anything else, or an "org" that is a local directory, is a path.
    return (name.startswith(("/", ".", "~")) or Path(name).suffix in SUFFIXES or name.count("/") != 1
            or Path(name).parent.is_dir())


def _slice(rows: list[dict], split: str) -> list[dict]:
    """Apply the slice of a datasets-style split spec ('train[:1000]', 'train[10%:20%]') to rows."""
    match = _SLICE.match(split.strip())
    if not match:
        return rows

    def bound(text: str | None) -> int | None:
        if text is None:
            return None
        return round(len(rows) * int(text[:-1]) / 100) if text.endswith("%") else int(text)

    return rows[bound(match["start"]):bound(match["stop"])]


def _load_hub(name: str, split: str, subset: str | None) -> list[dict]:
    import datasets  # slow import; only for hub ids

    try:
        return datasets.load_dataset(name, subset, split=split).to_list()
    except Exception as err:  # offline, unknown repo, unknown split: all end here
        raise DataError(f"input {name!r} is not a local file or directory (cwd {Path.cwd()}), and loading it "
                        f"as a Hugging Face hub dataset failed: {type(err).__name__}: {str(err)[:300]}") from None


def read_rows(source: str, split: str = "train", subset: str | None = None) -> tuple[list[dict], list[str]]:
    """All rows of ``source`` in order, and the files they came from."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise DataError(f"input directory {path} holds no {' / '.join(SUFFIXES)} files")
    elif path.is_file():
        if path.suffix not in SUFFIXES:
            raise DataError(f"input {path}: unsupported file type {path.suffix!r}; use {', '.join(SUFFIXES)}")
        files = [path]
    elif _looks_local(source):
        raise DataError(f"input {source!r} does not exist (cwd {Path.cwd()}); pass input=/path/to/data "
                        f"(a {' / '.join(SUFFIXES)} file or a directory)")
    else:
        return _slice(_load_hub(source, split.split("[")[0] or "train", subset), split), [source]
    rows: list[dict] = []
    for file in files:
        rows.extend(read_file(file))
    return _slice(rows, split), [str(f) for f in files]
