"""Raw dataset -> megatron-core indexed prompt set (+ labels and meta), driven by a dataset config.

    python -m mindrl.data.preprocess --config-name deepscaler input=... tokenizer_name_or_path=...

Steps: read rows -> split slice -> select -> look up map_keys fields (all rows, so every missing
field is reported with its rows) -> handler -> render template -> tokenize in batches -> drop
prompts over seq_length -> write atomically (see writer.py for the files).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import sys
import time
import weakref
from typing import Any, Optional, Sequence

import numpy as np

from mindrl.data.config import FIELD_HELP, DatasetConfig, available_configs, load_config, to_dict
from mindrl.data.errors import DataError, did_you_mean, preview
from mindrl.data.handlers import MISSING, Handler, get_field, get_handler
from mindrl.data.readers import read_rows
from mindrl.data.templates import TOKENIZER_SLOTS, Template, get_template, load_templates
from mindrl.data.tokenization import load_tokenizer, tokenize_prompts
from mindrl.data.writer import indexed_dataset_module, output_paths, write_prompt_set

Item = tuple[str, dict[str, Any]]


_VOCAB_SHA: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def tokenizer_sha256(tokenizer: Any, with_chat_template: bool = False) -> str:
    """Hash of what decides the ids: the tokenizer.json contents, plus the chat template when the
    prompts were rendered through it (otherwise a base and an instruct tokenizer with the same
    vocabulary are interchangeable and hash the same).

    Serialising a 150K-token vocabulary takes ~0.2 s, so that part is remembered per tokenizer object.
    """
    try:
        vocab_sha = _VOCAB_SHA[tokenizer]
    except (KeyError, TypeError):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        vocab = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
        vocab_sha = hashlib.sha256(vocab.encode("utf-8")).hexdigest()
        try:
            _VOCAB_SHA[tokenizer] = vocab_sha
        except TypeError:  # not weak-referenceable: just do not cache
            pass
    if not with_chat_template:
        return vocab_sha
    chat = str(getattr(tokenizer, "chat_template", None) or "")
    return hashlib.sha256(f"{vocab_sha}\0{chat}".encode("utf-8")).hexdigest()


def check_setup(cfg: DatasetConfig, handler: Handler, template: Template) -> None:
    """Config-level errors, before any data is read."""
    missing = [role for role in handler.required_roles if role not in cfg.map_keys]
    if missing:
        example = " ".join(f"map_keys.{role}=FIELD" for role in missing)
        raise DataError(f"handler {handler.name!r} needs map_keys for {missing} (got {dict(cfg.map_keys)}); "
                        f"pass e.g. {example}")
    slots = template.slots()
    label_names = set(cfg.map_keys) - {"prompt"} | set(cfg.dataset_additional_keys)
    unknown = slots - label_names - {"content", *TOKENIZER_SLOTS}
    if unknown:
        raise DataError(f"template {template.name!r} uses slots {sorted(unknown)} that no label provides "
                        f"(labels: {sorted(label_names)})")
    lacking = [s for s in handler.required_slots if s not in slots]
    if lacking:
        wanted = ", ".join("{{%s}}" % slot for slot in lacking)
        raise DataError(f"handler {handler.name!r} needs a template using {wanted}; "
                        f"template {template.name!r} does not (try countdown_r1 or countdown_r1_zh)")
    if "prompt" in cfg.map_keys and "content" not in slots:
        raise DataError(f"template {template.name!r} has no {{{{content}}}} slot, so the question from "
                        f"map_keys.prompt would be dropped")


def select_rows(total: int, count: Optional[int], seed: int) -> np.ndarray:
    """Indices of the rows to keep: all, or `count` drawn with `seed`, in source order."""
    if count is None or count >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def apply_handler(rows: list[dict], indices: np.ndarray, cfg: DatasetConfig, handler: Handler) -> list[Item]:
    fields = {**cfg.map_keys, **{key: key for key in cfg.dataset_additional_keys}}
    columns: dict[str, list[Any]] = {}
    for role, path in fields.items():
        values = [get_field(rows[i], path) for i in indices]
        # A null question or answer is as useless as a missing one; a null extra key is kept as null.
        mapped = role in cfg.map_keys
        absent = [int(indices[j]) for j, v in enumerate(values) if v is MISSING or (mapped and v is None)]
        if absent:
            seen = sorted({k for i in indices[:100] for k in rows[i]})
            what = f"map_keys.{role}" if mapped else "dataset_additional_keys"
            hint = "" if path in seen else did_you_mean(path, seen)
            raise DataError(f"field {path!r} ({what}) is {'absent or null' if mapped else 'absent'} in "
                            f"{len(absent)} of {len(indices)} rows (rows {preview(absent)}).{hint} "
                            f"Row fields: {', '.join(seen)}")
        columns[role] = values
    items, bad = [], []
    roles = list(fields)
    for j, row_values in enumerate(zip(*columns.values())):
        try:
            items.append(handler.fn(dict(zip(roles, row_values))))
        except (ValueError, TypeError) as err:
            bad.append((int(indices[j]), str(err)))
    if bad:
        raise DataError(f"handler {handler.name!r} rejected {len(bad)} rows (rows {preview([r for r, _ in bad])}); "
                        f"row {bad[0][0]}: {bad[0][1]}")
    return items


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars/arrays from parquet
        return value.tolist()
    raise TypeError(f"{value!r:.60} ({type(value).__name__}) is not JSON-serialisable")


def label_lines(items: list[Item], indices: np.ndarray) -> list[str]:
    """One JSON line per item, made before any tokenizing so a bad value fails fast."""
    lines = []
    for (_, labels), row in zip(items, indices):
        try:
            lines.append(json.dumps({"row": int(row), "labels": labels}, ensure_ascii=False, default=_json_default))
        except (TypeError, ValueError) as err:
            raise DataError(f"row {int(row)}: a label cannot be stored as JSON: {err}") from None
    return lines


def preprocess(cfg: DatasetConfig, *, tokenizer: Any = None, progress: bool = True,
               log: Any = print) -> dict[str, Any]:
    """Run the whole pipeline for `cfg`; returns the meta dict that was written."""
    start = time.perf_counter()
    handler = get_handler(cfg.handler_name)
    template = get_template(cfg.prompt_type, cfg.template_file)
    check_setup(cfg, handler, template)

    rows, files = read_rows(cfg.input, cfg.split, cfg.subset)
    if not rows:
        raise DataError(f"input {cfg.input!r} (split {cfg.split!r}) has no rows")
    n_read = len(rows)
    indices = select_rows(n_read, cfg.select, cfg.seed)
    items = apply_handler(rows, indices, cfg, handler)
    lines = label_lines(items, indices)
    del rows
    read_s = time.perf_counter() - start

    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.tokenizer_name_or_path)
    tokenize_start = time.perf_counter()
    flat, lengths = tokenize_prompts(items, template, tokenizer, workers=cfg.workers, progress=progress)
    tokenize_s = time.perf_counter() - tokenize_start
    keep = np.flatnonzero(lengths <= cfg.seq_length)
    dropped = np.flatnonzero(lengths > cfg.seq_length)
    if len(keep) == 0:
        raise DataError(f"nothing left after filtering: all {len(items)} prompts are longer than "
                        f"seq_length={cfg.seq_length} tokens (shortest {int(lengths.min())}); raise seq_length")
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    kept_lengths = lengths[keep]
    meta = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": to_dict(cfg),
        "input_files": files,
        "template": template.to_dict(),
        "tokenizer": {"name_or_path": cfg.tokenizer_name_or_path, "class": type(tokenizer).__name__,
                      "sha256": tokenizer_sha256(tokenizer, template.mode == "chat_template"),
                      "vocab_size": len(tokenizer),
                      "bos_token": getattr(tokenizer, "bos_token", None),
                      "eos_token": getattr(tokenizer, "eos_token", None)},
        "stop_words": list(template.stop_words),
        "label_keys": sorted({key for _, labels in items for key in labels}),
        "counts": {"read": n_read,
                   "selected": int(len(indices)), "kept": int(len(keep)), "dropped_too_long": int(len(dropped))},
        "dropped_rows": [int(indices[i]) for i in dropped],
        "prompt_tokens": {"min": int(kept_lengths.min()), "max": int(kept_lengths.max()),
                          "mean": round(float(kept_lengths.mean()), 2), "total": int(kept_lengths.sum())},
    }
    indexed_dataset_module()  # the slow megatron import, outside the write timing
    write_start = time.perf_counter()
    meta = write_prompt_set(
        cfg.output_prefix,
        (flat[offsets[i]:offsets[i + 1]] for i in keep),
        (lines[i] for i in keep),
        meta, vocab_size=len(tokenizer))
    now = time.perf_counter()
    log(f"[mindrl.data] {cfg.input}: {len(indices)} rows -> {len(keep)} prompts "
        f"({len(dropped)} dropped as longer than seq_length={cfg.seq_length}); "
        f"prompt tokens min/mean/max {meta['prompt_tokens']['min']}/{meta['prompt_tokens']['mean']}/"
        f"{meta['prompt_tokens']['max']}")
    log(f"[mindrl.data] {now - start:.2f} s: read {read_s:.2f}, tokenize {tokenize_s:.2f} "
        f"({len(items) / max(tokenize_s, 1e-9):,.0f} prompts/s), write {now - write_start:.2f} "
        f"(the rest: importing and loading the tokenizer and megatron)")
    log(f"[mindrl.data] wrote {output_paths(cfg.output_prefix)['prompt']}.{{bin,idx}}, "
        f"{output_paths(cfg.output_prefix)['labels']}, {output_paths(cfg.output_prefix)['meta']}")
    return meta


def _epilog() -> str:
    keys = "\n".join(f"  {key:<24} {text}" for key, text in FIELD_HELP.items())
    templates = ", ".join(load_templates())
    return (f"dataset config keys (override any with key=value; nested: map_keys.prompt=question):\n{keys}\n\n"
            f"dataset configs: {', '.join(available_configs())}\ntemplates (prompt_type): {templates}\n\n"
            "example:\n  python -m mindrl.data.preprocess --config-name deepscaler input=/data/deepscaler.json \\\n"
            "      tokenizer_name_or_path=/models/Qwen2.5-7B output_prefix=/data/out/deepscaler prompt_type=qwen_r1")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mindrl.data.preprocess", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tokenize a raw dataset into a megatron-core indexed prompt set for GRPO training.",
        epilog=_epilog())
    parser.add_argument("--config-name", help="dataset config in configs/datasets (or a path to a yaml file)")
    parser.add_argument("--config-dir", help="directory of dataset configs (default: configs/datasets)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)  # flags may come after key=value overrides
    try:
        cfg = load_config(args.config_name, args.overrides, config_dir=args.config_dir)
        if args.print_config:
            print(json.dumps(to_dict(cfg), indent=2, ensure_ascii=False))
            return 0
        preprocess(cfg, progress=not args.no_progress)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
