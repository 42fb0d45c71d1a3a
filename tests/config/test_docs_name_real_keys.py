"""Docs name only config keys the schema accepts; a peer's key names are labelled as the peer's.

Scans README.md, docs/*.md and the comments of configs/*.yaml for backticked dotted names:
- `<section>.<key>[.<key>]` with one of our sections (`rl_config.kl_coef`,
  `generate_config.sampling_config.top_p`, `model.hf_config_path`) must resolve in
  mindrl/config/schema.py. Hydra overrides written as `key=value` are checked by their key.
- A name in verl's namespaces (`algorithm.`, `actor_rollout_ref.`, `reward_model.`, `actor.`,
  `rollout.`, `critic.`, `trainer.`) must be in a paragraph (or bullet) that says whose it is
  ("verl"): a reader copying it into a mindrl recipe would get "unknown key".
"""
from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from mindrl.config import schema

REPO = Path(__file__).resolve().parents[2]
OURS = ("rl_config", "megatron_training", "actor_config", "generate_config", "model")
VERL = ("algorithm", "actor_rollout_ref", "reward_model", "actor", "rollout", "critic", "trainer")
FILE_SUFFIXES = (".json", ".safetensors", ".yaml", ".py", ".md", ".pt", ".txt", ".bin", ".sh")
TICKED = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"^\+*([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+)(?:=.*)?$")


def resolves(dotted: str) -> bool:
    cls: typing.Any = schema.MindRLConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            # A dict-valued field (model.hf_config.<hf key>, rl_config.verifier_options.<scorer>) takes any key.
            return cls is dict or typing.get_origin(cls) is dict
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return False
        cls = hints[part]
    return True


def doc_lines() -> list[tuple[str, int, str, str]]:
    """(file, line number, line, its paragraph): a paragraph ends at a blank line or a new bullet."""
    out = []
    for f in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        lines = f.read_text(encoding="utf-8").splitlines()
        starts = [i for i, line in enumerate(lines) if not line.strip() or line.lstrip().startswith(("* ", "- ", "|"))]
        for i, line in enumerate(lines):
            begin = max([s for s in starts if s <= i], default=0)
            end = min([s for s in starts if s > i], default=len(lines))
            out.append((str(f.relative_to(REPO)), i + 1, line, " ".join(lines[begin:end])))
    for f in sorted((REPO / "configs").glob("*.yaml")):
        out += [(str(f.relative_to(REPO)), i, line[line.index("#"):], line)
                for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if "#" in line]
    return out


def problems() -> list[str]:
    found = []
    for name, lineno, line, paragraph in doc_lines():
        candidates = TICKED.findall(line) if not name.startswith("configs/") else line.split()
        for tick in candidates:
            for word in tick.replace(",", " ").split():
                m = DOTTED.match(word.strip("`'\"().;:"))
                if not m:
                    continue
                key = m.group(1)
                if key.endswith(FILE_SUFFIXES):
                    continue
                head = key.split(".")[0]
                if head in OURS and not resolves(key):
                    found.append(f"{name}:{lineno}: `{key}` is not a config key (mindrl/config/schema.py)")
                elif head in VERL and "verl" not in paragraph.lower():
                    found.append(f"{name}:{lineno}: `{key}` looks like verl's key; say so, or name ours")
    return found


def test_docs_name_only_keys_the_schema_accepts():
    found = problems()
    assert not found, "\n".join(found)


def test_the_check_catches_a_bad_key():
    assert resolves("rl_config.kl_coef") and resolves("generate_config.sampling_config.top_p")
    assert resolves("model.hf_config.rope_theta") and resolves("rl_config.verifier_options.format")
    assert not resolves("rl_config.kl_loss_coef") and not resolves("megatron_training.dataset_additional_keys")
