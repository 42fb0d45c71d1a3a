"""Prompt templates as data: configs/model/templates.json -> a plain dict name -> Template.

A template describes one single-turn prompt that ends where the model starts writing:

    prefix + [system_format(system) + separator] + user_format(question) + separator
           + assistant_format up to its {{content}} + assistant_prefix

Strings may hold ``{{slot}}`` placeholders: ``{{content}}`` is the question text (from the handler),
``{{bos_token}}``/``{{eos_token}}`` come from the tokenizer, and any other name is filled from the
row's labels (Countdown's ``{{nums}}`` and ``{{target}}``). Slots are filled once per row by joining
pre-split literal pieces, never by re-scanning the question, so questions full of LaTeX braces (or
even "{{...}}") are inserted verbatim.

``"mode": "chat_template"`` renders through the tokenizer's own chat template instead, with
continue-final-message semantics when ``assistant_prefix`` is set. ``"base": "name"`` inherits every
field not given. Adding a template is a JSON edit; no code changes.

BOS is never added by the tokenizer (we tokenize with add_special_tokens=False): a template that
wants it says ``{{bos_token}}`` in its prefix, exactly like HF chat templates do. That keeps the
rendered text and the token ids in one-to-one correspondence whatever the tokenizer's post-processor.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from mindrl.data.errors import DataError, did_you_mean, unknown_name

DEFAULT_TEMPLATE_FILE = Path(__file__).resolve().parents[2] / "configs" / "model" / "templates.json"
_SLOT = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
MODES = ("text", "chat_template")
TOKENIZER_SLOTS = ("bos_token", "eos_token")

Renderer = Callable[[str, Mapping[str, Any]], str]


@dataclass(frozen=True)
class Template:
    name: str
    description: str = ""
    mode: str = "text"
    prefix: str = ""
    system: Optional[str] = None  # None: no system turn (chat_template mode: the template's default)
    system_format: str = "{{content}}"
    user_format: str = "{{content}}"
    assistant_format: str = "{{content}}"
    separator: str = ""
    assistant_prefix: str = ""
    stop_words: tuple[str, ...] = ()

    def skeleton(self) -> str:
        """The text-mode prompt with all slots still unfilled ({{content}} = the question)."""
        turns = []
        if self.system:
            turns.append(_fill_content(self.system_format, self.system))
        turns.append(self.user_format)
        turns.append(self.assistant_format.split("{{content}}", 1)[0])
        return self.prefix + self.separator.join(turns) + self.assistant_prefix

    def slots(self) -> set[str]:
        """Slot names the rendered prompt needs (content, tokenizer tokens, label names)."""
        text = self.skeleton() if self.mode == "text" else (self.system or "") + self.user_format
        return set(_SLOT.findall(text))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["stop_words"] = list(self.stop_words)
        return out

    def renderer(self, tokenizer: Any = None) -> Renderer:
        """``render(content, labels) -> prompt text`` for this tokenizer (bos/eos filled in once)."""
        constants = {"bos_token": _token(tokenizer, "bos_token"), "eos_token": _token(tokenizer, "eos_token")}
        if self.mode == "text":
            return _compile(self.skeleton(), constants)
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise DataError(f"template {self.name!r} renders through the tokenizer's chat template, but "
                            f"the tokenizer has none; pick a text template (prompt_type=...)")
        user = _compile(self.user_format, constants)
        system = _compile(self.system, constants) if self.system is not None else None
        prefix = self.assistant_prefix

        def render_chat(content: str, labels: Mapping[str, Any]) -> str:
            messages = []
            if system is not None:
                messages.append({"role": "system", "content": system(content, labels)})
            messages.append({"role": "user", "content": user(content, labels)})
            if prefix:  # continue the assistant turn from the prefix, like a pre-filled reply
                messages.append({"role": "assistant", "content": prefix})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not prefix,
                                                 continue_final_message=bool(prefix))

        return render_chat


def _token(tokenizer: Any, attr: str) -> str:
    value = getattr(tokenizer, attr, None) if tokenizer is not None else None
    return value if isinstance(value, str) else ""


def _fill_content(fmt: str, content: str) -> str:
    # Only the {{content}} slot is filled here; other slots in `content` stay slots.
    return _SLOT.sub(lambda m: content if m.group(1) == "content" else m.group(0), fmt)


def _format_value(value: Any) -> str:
    # Strings verbatim; lists/numbers like Python prints them ("[44, 19, 35]"), as TinyZero does.
    return value if isinstance(value, str) else str(value)


def _compile(text: str, constants: Mapping[str, str]) -> Renderer:
    """Split text at its slots once; constants are folded in, the rest filled per row."""
    pieces = _SLOT.split(text)  # literal, name, literal, name, ..., literal
    literals, names = [pieces[0]], []
    for i in range(1, len(pieces), 2):
        name, literal = pieces[i], pieces[i + 1]
        if name in constants:
            literals[-1] += constants[name] + literal
        else:
            names.append(name)
            literals.append(literal)
    if not names:
        fixed = literals[0]
        return lambda content, labels: fixed

    def render(content: str, labels: Mapping[str, Any]) -> str:
        out = [literals[0]]
        for name, literal in zip(names, literals[1:]):
            out.append(content if name == "content" else _format_value(labels[name]))
            out.append(literal)
        return "".join(out)

    return render


_FIELDS = {f.name for f in dataclasses.fields(Template)} - {"name"}
_SPEC_FIELDS = _FIELDS | {"base"}


def _resolve(name: str, specs: Mapping[str, dict], path: Path, seen: tuple[str, ...] = ()) -> dict:
    spec = specs[name]
    if not isinstance(spec, dict):
        raise DataError(f"{path}: template {name!r} must be a JSON object, got {type(spec).__name__}")
    for key in spec:
        if key not in _SPEC_FIELDS:
            raise DataError(f"{path}: template {name!r} has unknown field {key!r}."
                            f"{did_you_mean(key, _SPEC_FIELDS)} Valid: {', '.join(sorted(_SPEC_FIELDS))}")
    base = spec.get("base")
    if base is None:
        return dict(spec)
    if base in seen or base == name:
        raise DataError(f"{path}: template {name!r} inherits from itself through {' -> '.join(seen + (name, base))}")
    if base not in specs:
        raise DataError(f"{path}: template {name!r} has unknown base {base!r}.{did_you_mean(base, specs)}")
    merged = _resolve(base, specs, path, seen + (name,))
    merged.pop("description", None)  # a description belongs to its own template only
    merged.update({k: v for k, v in spec.items() if k != "base"})
    return merged


def _build(name: str, spec: dict, path: Path) -> Template:
    spec.pop("base", None)
    for key, value in spec.items():
        if key == "stop_words":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, str) or (key == "system" and value is None)
        if not ok:
            raise DataError(f"{path}: template {name!r} field {key!r} must be "
                            f"{'a list of strings' if key == 'stop_words' else 'a string'}, got {value!r}")
    template = Template(name=name, **{**spec, "stop_words": tuple(spec.get("stop_words", ()))})
    if template.mode not in MODES:
        raise DataError(f"{path}: template {name!r} has mode {template.mode!r}; valid: {', '.join(MODES)}")
    if template.mode == "text" and "{{content}}" not in template.assistant_format:
        raise DataError(f"{path}: template {name!r}: assistant_format needs a {{{{content}}}} slot "
                        f"(the prompt ends where it stands)")
    if template.system and "{{content}}" not in template.system_format:
        raise DataError(f"{path}: template {name!r}: system_format needs a {{{{content}}}} slot")
    return template


@lru_cache(maxsize=8)
def _load(path: Path) -> dict[str, Template]:
    try:
        specs = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"template file {path} not found (set template_file=/path/to/templates.json)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"template file {path} is not valid JSON: {err}") from None
    if not isinstance(specs, dict):
        raise DataError(f"template file {path} must hold a JSON object name -> template")
    return {name: _build(name, _resolve(name, specs, path), path) for name in specs}


def load_templates(path: str | Path | None = None) -> dict[str, Template]:
    """The template registry: a plain dict name -> Template, from ``path`` or the shipped file."""
    return dict(_load(Path(path or DEFAULT_TEMPLATE_FILE).resolve()))


def get_template(name: str, path: str | Path | None = None) -> Template:
    templates = load_templates(path)
    if name not in templates:
        raise unknown_name("template (prompt_type)", name, templates)
    return templates[name]
