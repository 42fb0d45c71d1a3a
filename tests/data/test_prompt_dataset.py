"""PromptDataset: random access, the resumable sample stream, and detection of mixed outputs."""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from mindrl.data.errors import DataError
from mindrl.data.prompt_dataset import PromptDataset
from mindrl.data.writer import output_paths
from tests.conftest import shared_path
from tests.data.conftest import run


@pytest.fixture(scope="module")
def prompts(qwen_tok, tmp_path_factory):
    path = shared_path("data", "countdown", "countdown_test_1024.jsonl")
    _, prefix = run("countdown", qwen_tok, tmp_path_factory.mktemp("pd") / "cd", input=path, split="train[:37]")
    return prefix


def key(sample) -> tuple:
    return sample.index, tuple(sample.prompt_ids.tolist()), json.dumps(sample.labels)


def test_random_access(prompts):
    ds = PromptDataset(prompts, shuffle=False)
    raw = [json.loads(line) for line in shared_path("data", "countdown", "countdown_test_1024.jsonl")
           .read_text().splitlines()[:37]]
    assert len(ds) == 37
    assert [ds[i].labels for i in range(37)] == raw
    assert ds[-1].labels == raw[-1] and ds[-1].index == 36
    assert ds[3].prompt_ids.dtype == np.int64 and len(ds[3].prompt_ids) > 50
    with pytest.raises(IndexError):
        ds[37]


@pytest.mark.parametrize("shuffle", [True, False])
def test_resume_continues_the_same_stream(prompts, shuffle):
    full = PromptDataset(prompts, shuffle=shuffle, seed=3)
    stream = [key(s) for s in full.take(100)]  # crosses two epoch boundaries (37 prompts)
    assert full.state_dict() == {"consumed_samples": 100}
    for consumed in (0, 1, 36, 37, 50, 74, 99):
        resumed = PromptDataset(prompts, shuffle=shuffle, seed=3, consumed_samples=consumed)
        assert [key(s) for s in resumed.take(100 - consumed)] == stream[consumed:]
    # Each epoch visits every prompt once; a shuffled order differs between epochs.
    epochs = [sorted(k[0] for k in stream[e * 37:(e + 1) * 37]) for e in range(2)]
    assert epochs == [list(range(37))] * 2
    firsts = [k[0] for k in stream[:37]], [k[0] for k in stream[37:74]]
    assert (firsts[0] != firsts[1]) == shuffle
    # state_dict/load_state_dict round-trip
    other = PromptDataset(prompts, shuffle=shuffle, seed=3)
    other.load_state_dict({"consumed_samples": 60})
    assert key(next(iter(other))) == stream[60]


def test_seed_and_epochs(prompts):
    a = [s.index for s in PromptDataset(prompts, seed=1).take(37)]
    b = [s.index for s in PromptDataset(prompts, seed=2).take(37)]
    assert a != b and sorted(a) == sorted(b)
    limited = PromptDataset(prompts, num_epochs=2, consumed_samples=70)
    assert len(list(limited)) == 4 and limited.consumed_samples == 74


def test_pickles_for_dataloader_workers(prompts):
    ds = PromptDataset(prompts, shuffle=False, consumed_samples=5)
    copy = pickle.loads(pickle.dumps(ds))
    assert key(copy[7]) == key(ds[7]) and copy.consumed_samples == 5


def test_mixed_or_missing_outputs_are_detected(prompts, tmp_path, qwen_tok):
    with pytest.raises(DataError, match="is missing"):
        PromptDataset(tmp_path / "nothing")
    # Labels from another run next to this run's prompts: the meta file's sizes catch it.
    mixed = tmp_path / "mixed"
    for part, path in output_paths(prompts).items():
        if part != "prompt":
            shutil.copy(path, output_paths(mixed)[part])
    other, _ = run("countdown", qwen_tok, tmp_path / "other",
                   input=shared_path("data", "countdown", "countdown_test_1024.jsonl"), split="train[:38]")
    shutil.copy(output_paths(tmp_path / "other")["labels"], output_paths(mixed)["labels"])
    with pytest.raises(DataError, match="come from different runs"):
        PromptDataset(mixed)


def test_check_tokenizer(prompts, qwen_tok, deepseek_tok, tmp_path):
    ds = PromptDataset(prompts)
    ds.check_tokenizer(qwen_tok)
    with pytest.raises(DataError, match="was tokenized with"):
        ds.check_tokenizer(deepseek_tok)
    path = shared_path("data", "deepscaler", "deepscaler_subset_2000.jsonl")
    _, chat = run("deepscaler", qwen_tok, tmp_path / "chat", input=path, prompt_type="chat_template",
                  split="train[:3]")
    original = qwen_tok.chat_template
    try:
        qwen_tok.chat_template = original.replace("You are Qwen", "You are Q")
        ds.check_tokenizer(qwen_tok)  # text templates do not depend on the chat template
        with pytest.raises(DataError, match="was tokenized with"):
            PromptDataset(chat).check_tokenizer(qwen_tok)
    finally:
        qwen_tok.chat_template = original
    PromptDataset(chat).check_tokenizer(qwen_tok)
