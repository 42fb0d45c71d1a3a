"""Write a preprocessed prompt set atomically.

Files for ``output_prefix=P``:

* ``P_prompt.bin`` / ``P_prompt.idx``: megatron-core IndexedDataset, one sequence (and one document)
  per prompt: the prompt's token ids.
* ``P_labels.jsonl``: line i = ``{"row": source row index, "labels": {...}}`` for prompt i, UTF-8,
  ``ensure_ascii=False``. JSON keeps strings, ints, floats and lists exactly, and stays greppable.
* ``P_meta.json``: config, template, tokenizer hash, counts, dropped rows, sizes and sha256 of the
  three files above. Written last.

Everything is first written under temporary names next to the target and renamed into place with
``os.replace`` only once all of it succeeded, so a failed or interrupted run never leaves an existing
output half-overwritten. PromptDataset checks the sizes recorded in the meta file, which catches a
set mixed from two runs.
"""
from __future__ import annotations

import hashlib
import json
import os

import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from mindrl.utils.io import fsync_path

FORMAT_VERSION = 1
PARTS = ("bin", "idx", "labels", "meta")


def indexed_dataset_module() -> Any:
    """megatron.core.datasets.indexed_dataset, imported on first use: importing megatron.core takes
    ~7 s on CPU (it pulls in torch and all of megatron), which --help and config errors should not pay."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def output_paths(prefix: str | os.PathLike) -> dict[str, str]:
    prefix = str(prefix)
    return {"prompt": f"{prefix}_prompt", "bin": f"{prefix}_prompt.bin", "idx": f"{prefix}_prompt.idx",
            "labels": f"{prefix}_labels.jsonl", "meta": f"{prefix}_meta.json"}


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: str) -> None:
    fsync_path(path)


def write_prompt_set(prefix: str | os.PathLike, sequences: Iterable[np.ndarray], label_lines: Iterable[str],
                     meta: dict[str, Any], *, vocab_size: int) -> dict[str, Any]:
    """Write the four files for ``prefix``; returns the meta dict as written."""
    megatron = indexed_dataset_module()
    final = output_paths(prefix)
    Path(final["meta"]).parent.mkdir(parents=True, exist_ok=True)
    tmp = {part: f"{final[part]}.tmp-{os.getpid()}" for part in PARTS}
    dtype = megatron.DType.optimal_dtype(vocab_size)
    try:
        builder = megatron.IndexedDatasetBuilder(tmp["bin"], dtype=dtype)
        for ids in sequences:
            builder.add_document(ids, [len(ids)])
        builder.finalize(tmp["idx"])
        with open(tmp["labels"], "w", encoding="utf-8") as f:
            for line in label_lines:
                f.write(line)
                f.write("\n")
        meta = {**meta, "format_version": FORMAT_VERSION, "dtype": np.dtype(dtype).name,
                "files": {part: {"name": Path(final[part]).name, "bytes": os.path.getsize(tmp[part]),
                                 "sha256": sha256_file(tmp[part])} for part in ("bin", "idx", "labels")}}
        with open(tmp["meta"], "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False, indent=2)
            f.write("\n")
        for part in PARTS:
            _fsync(tmp[part])
        for part in PARTS:  # meta last: it is what readers open first
            os.replace(tmp[part], final[part])
    finally:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
    return meta
