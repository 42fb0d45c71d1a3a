"""Dataset configs: every shipped config is valid; overrides merge; typos get a "did you mean"; the CLI."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mindrl.data.config import CONFIG_DIR, available_configs, load_config
from mindrl.data.errors import DataError
from mindrl.data.handlers import get_handler
from mindrl.data.preprocess import check_setup
from mindrl.data.templates import get_template
from tests.conftest import REPO

SCRIPT = REPO / "examples" / "data" / "preprocess_data.sh"


def test_shipped_configs_are_complete_and_consistent():
    names = available_configs()
    assert {"deepscaler", "countdown", "math23k", "gsm8k", "math500", "aime24", "amc23"} <= set(names)
    for name in names:
        cfg = load_config(name)
        check_setup(cfg, get_handler(cfg.handler_name), get_template(cfg.prompt_type, cfg.template_file))
        # Defaults are relative paths a user overrides; the package never points into ../shared.
        for value in (cfg.input, cfg.output_prefix, cfg.tokenizer_name_or_path):
            assert not Path(value).is_absolute() and "shared" not in value, (name, value)


def test_overrides_merge_into_the_file():
    cfg = load_config("deepscaler", ["input=/data/x.parquet", "map_keys.prompt=question", "seq_length=77",
                                     "dataset_additional_keys=[level, subject]", "select=10"])
    assert cfg.input == "/data/x.parquet" and cfg.seq_length == 77 and cfg.select == 10
    assert cfg.map_keys == {"prompt": "question", "answer": "answer"}
    assert cfg.dataset_additional_keys == ["level", "subject"]
    assert cfg.handler_name == "r1_math"  # untouched keys keep the file's value


@pytest.mark.parametrize("overrides, message", [
    (["seq_lenght=5"], "unknown dataset config key 'seq_lenght' in the overrides. Did you mean 'seq_length'"),
    (["seq_length=abc"], "bad dataset config value"),
    (["seq_length=0"], "seq_length must be positive"),
    (["workers=0"], "workers must be positive"),
    (["inputfile"], "key=value"),
    (["dataset_additional_keys=[answer]"], "both as a map_keys role and in dataset_additional_keys"),
])
def test_bad_overrides(overrides, message):
    with pytest.raises(DataError, match=message.replace("[", r"\[")):
        load_config("deepscaler", overrides)


def test_bad_config_files(tmp_path):
    with pytest.raises(DataError, match="no dataset config 'deepscalr'.*Did you mean 'deepscaler'"):
        load_config("deepscalr")
    bad = tmp_path / "mine.yaml"
    bad.write_text("input: a.jsonl\nhandler: r1_math\n")
    with pytest.raises(DataError, match="unknown dataset config key 'handler' in .*mine.yaml"):
        load_config(str(bad))
    with pytest.raises(DataError, match="input is required"):
        load_config(None, [])


def test_every_config_key_is_documented():
    from mindrl.data.config import FIELD_HELP, FIELDS

    assert list(FIELD_HELP) == FIELDS
    doc = (REPO / "docs" / "data.md").read_text(encoding="utf-8")
    assert all(f"`{key}`" in doc for key in FIELDS)
    assert CONFIG_DIR == REPO / "configs" / "datasets"


def _script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_script_reports_missing_input_without_traceback(tmp_path):
    out = tmp_path / "out"
    proc = _script("deepscaler", f"output_prefix={out}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: input 'data/raw/deepscaler/deepscaler.json' does not exist" in proc.stderr
    assert "pass input=" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.parent.exists() or not list(out.parent.iterdir())
    proc = _script("deepscalr", cwd=tmp_path)
    assert proc.returncode == 2 and "Did you mean 'deepscaler'" in proc.stderr


def test_help_lists_configs_and_templates(tmp_path):
    proc = _script("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "deepscaler" in proc.stdout and "countdown_r1_zh" in proc.stdout and "map_keys" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "mindrl.data.preprocess", "--config-name", "gsm8k",
                           "--print-config", "seq_length=99"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and '"seq_length": 99' in proc.stdout


@pytest.mark.slow
def test_unreachable_hub_id(tmp_path):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "mindrl.data.preprocess", "--config-name", "gsm8k",
                           "input=someorg/no-such-dataset"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "is not a local file or directory" in proc.stderr and "hub dataset failed" in proc.stderr


@pytest.mark.slow
def test_script_end_to_end(tmp_path):
    from tests.conftest import shared_path

    from mindrl.data.prompt_dataset import PromptDataset

    data = shared_path("data", "countdown", "countdown_train_10000.jsonl")
    tok = shared_path("models", "Qwen2.5-Instruct-tokenizer")
    proc = _script("countdown", f"input={data}", f"tokenizer_name_or_path={tok}", "output_prefix=out/cd",
                   "select=500", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "500 rows -> 500 prompts" in proc.stdout
    ds = PromptDataset(tmp_path / "out" / "cd")
    assert len(ds) == 500 and ds.meta["template"]["name"] == "countdown_r1"
