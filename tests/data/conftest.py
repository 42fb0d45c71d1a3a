"""Fixtures for the data tests: real tokenizers from ../shared (loaded once) and a quiet preprocess."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mindrl.data.config import load_config
from mindrl.data.preprocess import preprocess
from tests.conftest import shared_path


def load_tok(*parts: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(shared_path(*parts)))


@pytest.fixture(scope="session")
def qwen_tok() -> Any:
    return load_tok("models", "Qwen2.5-Instruct-tokenizer")


@pytest.fixture(scope="session")
def deepseek_tok() -> Any:
    return load_tok("models", "DeepSeek-R1")


def run(config: str | None, tokenizer: Any, out: Path, **overrides: Any):
    """preprocess() for a shipped config with overrides; returns (meta, output prefix)."""
    prefix = str(out)
    args = [f"{k}={v}" for k, v in overrides.items()] + [f"output_prefix={prefix}"]
    if "tokenizer_name_or_path" not in overrides:
        args.append(f"tokenizer_name_or_path={getattr(tokenizer, 'name_or_path', 'tok')}")
    cfg = load_config(config, args)
    return preprocess(cfg, tokenizer=tokenizer, progress=False, log=lambda *a: None), prefix
