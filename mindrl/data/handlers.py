"""Handlers: a plain dict name -> Handler that turns one raw row into (question text, labels).

``map_keys`` (in the dataset config) maps roles to source fields, e.g. ``{prompt: problem, answer:
answer}``; a field may be a dotted path into nested data (``reward_model.ground_truth``,
``prompt.0.content``). The pipeline looks every field up first (so a missing field is reported
once, with the rows that lack it) and passes the handler ``values``: role -> raw value. A handler
returns the question text for the template's ``{{content}}`` slot and the labels dict the reward
sees. By default every role except ``prompt`` becomes a label verbatim (lossless: an AMC answer
stays the float 27.0, a Math23K answer stays the string "19((3)/(4))").

Adding a handler: write ``fn(values) -> (content, labels)`` raising ValueError on a bad row, and add
one line to HANDLERS.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from mindrl.data.errors import unknown_name

MISSING = object()


@dataclass(frozen=True)
class Handler:
    name: str
    fn: Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]]
    required_roles: tuple[str, ...]  # map_keys must name these
    required_slots: tuple[str, ...] = ()  # the template must use these (else the question is lost)
    description: str = ""


def get_field(row: Mapping[str, Any], path: str) -> Any:
    """row[path], or a walk along a dotted path (ints index lists); MISSING if absent."""
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value


def _question(values: Mapping[str, Any]) -> str:
    text = values["prompt"]
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the prompt must be non-empty text, got {text!r:.80}")
    return text


def _rest(values: Mapping[str, Any]) -> dict[str, Any]:
    return {role: value for role, value in values.items() if role != "prompt"}


def r1_math(values: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Question from ``prompt``; ``answer`` and any other role kept verbatim as labels."""
    return _question(values), _rest(values)


def gsm8k(values: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """GSM8K: ``answer`` is a worked solution ending '#### 1,000'; the label is '1000', the solution kept."""
    solution = values["answer"]
    if not isinstance(solution, str) or "####" not in solution:
        raise ValueError(f"a GSM8K answer must end with '#### <number>', got {solution!r:.80}")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")  # GSM8K's own eval drops commas
    if not final:
        raise ValueError(f"nothing after '####' in {solution!r:.80}")
    return _question(values), {**_rest(values), "answer": final, "solution": solution}


def _int(value: Any, what: str) -> int:
    # JSON gives ints; CSV gives strings; parquet may give numpy ints or whole floats.
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        as_int = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if as_int != value:
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return as_int


def countdown(values: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Countdown: ``nums`` (list of ints) and ``target`` (int) fill the template; no question text."""
    nums = values["nums"]
    if isinstance(nums, str):  # CSV stores the list as text
        try:
            nums = json.loads(nums)
        except json.JSONDecodeError:
            raise ValueError(f"nums must be a list of integers, got {nums!r:.80}") from None
    if hasattr(nums, "tolist"):  # numpy array from parquet
        nums = nums.tolist()
    if not isinstance(nums, (list, tuple)) or not nums:
        raise ValueError(f"nums must be a non-empty list of integers, got {nums!r:.80}")
    labels = {**_rest(values), "nums": [_int(n, "each of nums") for n in nums],
              "target": _int(values["target"], "target")}
    return "", labels


HANDLERS: dict[str, Handler] = {
    "r1_math": Handler("r1_math", r1_math, ("prompt", "answer"), description=r1_math.__doc__ or ""),
    "gsm8k": Handler("gsm8k", gsm8k, ("prompt", "answer"), description=gsm8k.__doc__ or ""),
    "countdown": Handler("countdown", countdown, ("nums", "target"), ("nums", "target"),
                         description=countdown.__doc__ or ""),
}


def get_handler(name: str) -> Handler:
    if name not in HANDLERS:
        raise unknown_name("handler (handler_name)", name, HANDLERS)
    return HANDLERS[name]
