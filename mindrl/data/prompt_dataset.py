"""PromptDataset: read a preprocessed prompt set back, resumable by consumed samples.

The stream is epoch after epoch of (optionally) shuffled prompts: position k of the stream is
prompt ``order(k // len)[k % len]``, where each epoch's permutation depends only on (seed, epoch).
So a run restarted with ``consumed_samples=k`` (from the checkpoint) continues with exactly the
prompts it would have seen, on any number of ranks, without replaying the first k.
"""
from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from mindrl.data.errors import DataError
from mindrl.data.writer import FORMAT_VERSION, indexed_dataset_module, output_paths


@dataclass
class PromptSample:
    index: int  # position in the prompt set
    row: int  # row in the source data (after split/select), for tracing a prompt back
    prompt_ids: np.ndarray  # int64 token ids
    labels: dict[str, Any]  # what the reward functions see (answer, nums, target, extra keys)


class PromptDataset:
    def __init__(self, prefix: str | os.PathLike, *, consumed_samples: int = 0, shuffle: bool = True,
                 seed: int = 1234, num_epochs: Optional[int] = None) -> None:
        self.prefix = str(prefix)
        self.paths = output_paths(self.prefix)
        self.shuffle, self.seed, self.num_epochs = shuffle, seed, num_epochs
        if consumed_samples < 0:
            raise ValueError(f"consumed_samples must be >= 0, got {consumed_samples}")
        self.consumed_samples = consumed_samples
        try:
            self.meta: dict[str, Any] = json.loads(Path(self.paths["meta"]).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"no prompt set at {self.prefix}: {self.paths['meta']} is missing "
                            f"(run examples/data/preprocess_data.sh first)") from None
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{self.paths['meta']}: format_version {self.meta.get('format_version')} "
                            f"!= {FORMAT_VERSION}; preprocess the data again")
        for part, info in self.meta["files"].items():
            size = os.path.getsize(self.paths[part]) if os.path.exists(self.paths[part]) else None
            if size != info["bytes"]:
                raise DataError(f"{self.paths[part]} has {size} bytes but {self.paths['meta']} says "
                                f"{info['bytes']}: the files come from different runs; preprocess again")
        self._prompts: Any = None
        self._labels: Optional[mmap.mmap] = None
        self._line_ends: Optional[np.ndarray] = None
        self._open()
        if len(self._prompts) != self.meta["counts"]["kept"] or len(self._line_ends) != len(self._prompts):
            raise DataError(f"{self.prefix}: {len(self._prompts)} prompts, {len(self._line_ends)} label lines, "
                            f"meta says {self.meta['counts']['kept']}")

    def _open(self) -> None:
        self._prompts = indexed_dataset_module().IndexedDataset(self.paths["prompt"], mmap=True)
        with open(self.paths["labels"], "rb") as f:
            self._labels = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        # One vectorised pass for the line offsets; labels are then parsed only when asked for.
        self._line_ends = np.flatnonzero(np.frombuffer(self._labels, dtype=np.uint8) == ord("\n"))

    def __getstate__(self) -> dict[str, Any]:  # for DataLoader workers: reopen instead of pickling mmaps
        state = self.__dict__.copy()
        state.update(_prompts=None, _labels=None, _line_ends=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self._prompts)

    def __getitem__(self, index: int) -> PromptSample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"prompt {index} out of range for {len(self)} prompts")
        index %= len(self)
        start = 0 if index == 0 else int(self._line_ends[index - 1]) + 1
        record = json.loads(self._labels[start:int(self._line_ends[index])])
        ids = np.asarray(self._prompts[index], dtype=np.int64)
        return PromptSample(index=index, row=record["row"], prompt_ids=ids, labels=record["labels"])

    def order(self, epoch: int) -> np.ndarray:
        """Prompt indices in the order epoch ``epoch`` visits them."""
        if not self.shuffle:
            return np.arange(len(self))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self))

    def __iter__(self) -> Iterator[PromptSample]:
        """Samples from position consumed_samples on; consumed_samples advances as they are taken."""
        n = len(self)
        while self.num_epochs is None or self.consumed_samples < self.num_epochs * n:
            epoch, offset = divmod(self.consumed_samples, n)
            order = self.order(epoch)
            for position in range(offset, n):
                sample = self[int(order[position])]
                self.consumed_samples += 1
                yield sample

    def take(self, count: int) -> list[PromptSample]:
        """The next ``count`` samples (fewer only when num_epochs runs out)."""
        out = []
        for sample in iter(self):
            out.append(sample)
            if len(out) == count:
                break
        return out

    def state_dict(self) -> dict[str, int]:
        return {"consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consumed_samples = int(state["consumed_samples"])

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise if ``tokenizer`` is not the one the prompts were tokenized with."""
        from mindrl.data.preprocess import tokenizer_sha256

        expected = self.meta["tokenizer"]["sha256"]
        got = tokenizer_sha256(tokenizer, self.meta["template"]["mode"] == "chat_template")
        if got != expected:
            raise DataError(f"{self.prefix} was tokenized with {self.meta['tokenizer']['name_or_path']} "
                            f"(sha256 {expected[:12]}), this tokenizer hashes to {got[:12]}")
