"""Render + tokenize prompts in batches: in-process with the Rust tokenizer's threads, or over a
pool of worker processes.

Prompts are tokenized with ``add_special_tokens=False`` (templates add BOS themselves) through the
``tokenizers`` backend's batch encoder, skipping offsets (``encode_batch_fast``): that is where the
speed over a per-row ``tokenizer(text)`` comes from, together with tokenizing the template text once
instead of once per row where that is exact (prefix_cache.py). Results travel as one flat array plus
lengths per chunk, not lists of Python ints.
"""
from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from mindrl.data.errors import DataError
from mindrl.data.prefix_cache import PrefixPlan, build_plan
from mindrl.data.templates import Template

Item = tuple[str, Mapping[str, Any]]  # (question text, labels)
CHUNK = 2048

# Set in the parent just before forking; pool workers inherit it (no pickling of the tokenizer or
# of the rows: a worker gets only a (start, stop) range).
_STATE: dict[str, Any] = {}


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer  # slow import (~5 s): only when we get this far

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as err:  # missing dir, offline hub, bad files
        raise DataError(f"cannot load tokenizer {name_or_path!r}: {type(err).__name__}: {str(err)[:300]}. "
                        f"Pass tokenizer_name_or_path=/path/to/tokenizer_dir") from None


def encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a pure-Python tokenizer: correct, just slower
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    batch = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    return [e.ids for e in batch(texts, add_special_tokens=False)]


def _encode_range(bounds: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    render: Callable[[str, Mapping[str, Any]], str] = _STATE["render"]
    plan: Optional[PrefixPlan] = _STATE["plan"]
    tokenizer = _STATE["tokenizer"]
    chunk: Sequence[Item] = _STATE["items"][bounds[0]:bounds[1]]
    if plan is None:
        ids = encode(tokenizer, [render(content, labels) for content, labels in chunk])
    else:  # questions only where that is exact (see prefix_cache.py), whole prompts for the rest
        short = [plan.applies(content) for content, _ in chunk]
        questions = iter(encode(tokenizer, [c for (c, _), s in zip(chunk, short) if s]))
        rest = [render(c, labels) for (c, labels), s in zip(chunk, short) if not s]
        prompts = iter(encode(tokenizer, rest) if rest else [])
        ids = [plan.ids(next(questions)) if s else next(prompts) for s in short]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def _init_worker() -> None:
    # One process per core already; the tokenizer's own thread pool would only oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def tokenize_prompts(items: Sequence[Item], template: Template, tokenizer: Any, *, workers: int = 1,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of every rendered prompt, as (flat int64 ids, lengths)."""
    from tqdm import tqdm

    ranges = [(i, min(i + CHUNK, len(items))) for i in range(0, len(items), CHUNK)]
    _STATE.update(render=template.renderer(tokenizer), plan=build_plan(template, tokenizer, encode), items=items,
                  tokenizer=tokenizer)
    # A pool costs ~0.1 s to start and cannot beat the in-process thread pool on a few chunks.
    use_pool = workers > 1 and len(ranges) >= 2 * workers and "fork" in mp.get_all_start_methods()
    bar = tqdm(total=len(items), desc="tokenizing", unit="prompt", disable=not progress or None,
               file=sys.stderr, mininterval=0.5)
    flats, lengths = [], []
    try:
        if use_pool:
            with mp.get_context("fork").Pool(workers, initializer=_init_worker) as pool:
                for flat, length in pool.imap(_encode_range, ranges):
                    flats.append(flat), lengths.append(length), bar.update(len(length))
        else:
            for bounds in ranges:
                flat, length = _encode_range(bounds)
                flats.append(flat), lengths.append(length), bar.update(len(length))
    finally:
        bar.close()
        _STATE.clear()
    if not flats:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(flats), np.concatenate(lengths)
