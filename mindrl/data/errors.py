"""The one exception type the data pipeline raises for bad input, and the "did you mean" helper."""
from __future__ import annotations

import difflib
from typing import Iterable, Sequence


class DataError(ValueError):
    """Bad input to preprocessing (file, rows, config, template): the message says what and where.

    The CLI prints the message without a traceback; anything else escaping is a bug in mindrl.
    """


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest valid name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> DataError:
    """DataError for an unknown registry key, with the closest match and the full list."""
    valid = sorted(valid)
    return DataError(f"unknown {kind} {name!r}.{did_you_mean(name, valid)} Valid: {', '.join(valid)}")


def preview(indices: Sequence[int], limit: int = 10) -> str:
    """'0, 3, 7' or '0, 3, 7, ... (25 in all)' for error messages that list rows."""
    head = ", ".join(str(i) for i in indices[:limit])
    return head if len(indices) <= limit else f"{head}, ... ({len(indices)} in all)"
