"""Dataset configs: configs/datasets/<name>.yaml merged over DatasetConfig, then key=value overrides.

OmegaConf does the merging and type checks; we check key names first so that a typo gets a
"did you mean" instead of OmegaConf's generic "key not in struct".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mindrl.data.errors import DataError, did_you_mean

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "datasets"


@dataclass
class DatasetConfig:
    input: str = MISSING
    tokenizer_name_or_path: str = MISSING
    output_prefix: str = MISSING
    handler_name: str = "r1_math"
    prompt_type: str = "qwen_r1"
    # No default roles: OmegaConf merges dicts key by key, so defaults here would leak into every
    # dataset (a Countdown config would inherit a `prompt` role).
    map_keys: dict[str, str] = field(default_factory=dict)
    dataset_additional_keys: list[str] = field(default_factory=list)
    seq_length: int = 2048
    workers: int = 1
    split: str = "train"
    subset: Optional[str] = None
    select: Optional[int] = None
    seed: int = 1234
    template_file: Optional[str] = None


# One line each, for --help and the docs.
FIELD_HELP = {
    "input": "json / jsonl / parquet / csv file, a directory of them, or a HF hub id (online only)",
    "tokenizer_name_or_path": "HF tokenizer directory (or hub id when online)",
    "output_prefix": "writes PREFIX_prompt.bin/.idx, PREFIX_labels.jsonl, PREFIX_meta.json",
    "handler_name": "row -> (question, labels): r1_math, gsm8k, countdown",
    "prompt_type": "template name in configs/model/templates.json",
    "map_keys": "role -> source field (dotted paths allowed), e.g. {prompt: problem, answer: answer}",
    "dataset_additional_keys": "raw fields copied into the labels under their own names",
    "seq_length": "drop prompts longer than this many tokens (reported in the meta file)",
    "workers": "tokenizer processes (1: in-process, with the tokenizer's own threads)",
    "split": "hub split name; for local files only its slice matters, e.g. train[:1000] or train[10%:]",
    "subset": "hub dataset configuration name (e.g. main for openai/gsm8k)",
    "select": "keep N randomly chosen rows (in source order), drawn with `seed`",
    "seed": "seed for `select`",
    "template_file": "templates JSON (default: configs/model/templates.json)",
}

FIELDS = [f.name for f in dataclasses.fields(DatasetConfig)]


def _check_keys(cfg: DictConfig | dict, where: str) -> None:
    for key in cfg:
        if key not in FIELDS:
            raise DataError(f"unknown dataset config key {key!r} in {where}.{did_you_mean(str(key), FIELDS)} "
                            f"Valid keys: {', '.join(FIELDS)}")


def available_configs(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in config_dir.glob("*.yaml"))


def find_config(name: str, config_dir: str | Path | None = None) -> Path:
    """configs/datasets/NAME.yaml, or NAME itself when it is a path to a yaml file."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return as_path
    directory = Path(config_dir) if config_dir else CONFIG_DIR
    candidate = directory / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    names = available_configs(directory)
    raise DataError(f"no dataset config {name!r} in {directory}.{did_you_mean(name, names)} "
                    f"Available: {', '.join(names) or '(none)'}")


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise DataError(f"overrides must look like key=value, got {bad}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as err:
        raise DataError(f"cannot parse overrides {list(overrides)}: {err}") from None


def load_config(name: str | None = None, overrides: Sequence[str] = (), *,
                config_dir: str | Path | None = None) -> DatasetConfig:
    """Defaults <- configs/datasets/NAME.yaml <- overrides, as a checked DatasetConfig."""
    layers: list[Any] = [OmegaConf.structured(DatasetConfig)]
    if name:
        path = find_config(name, config_dir)
        try:
            file_cfg = OmegaConf.load(path)
        except Exception as err:  # yaml errors come in several types
            raise DataError(f"cannot read dataset config {path}: {err}") from None
        if not isinstance(file_cfg, DictConfig):
            raise DataError(f"dataset config {path} must be a mapping")
        _check_keys(file_cfg, str(path))
        layers.append(file_cfg)
    extra = parse_overrides(overrides)
    _check_keys(extra, "the overrides")
    layers.append(extra)
    try:
        merged = OmegaConf.merge(*layers)
        cfg: DatasetConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        msg = str(err).splitlines()[0]
        if "missing mandatory value" in msg.lower():
            key = msg.rsplit(":", 1)[-1].strip()
            raise DataError(f"{key} is required: pass {key}=... ({FIELD_HELP.get(key, '')})") from None
        raise DataError(f"bad dataset config value: {msg}") from None
    validate(cfg)
    return cfg


def validate(cfg: DatasetConfig) -> None:
    if cfg.seq_length <= 0:
        raise DataError(f"seq_length must be positive, got {cfg.seq_length}")
    if cfg.workers <= 0:
        raise DataError(f"workers must be positive, got {cfg.workers}")
    if cfg.select is not None and cfg.select <= 0:
        raise DataError(f"select must be a positive number of rows, got {cfg.select}")
    clash = set(cfg.map_keys) & set(cfg.dataset_additional_keys)
    if clash:
        raise DataError(f"{sorted(clash)} named both as a map_keys role and in dataset_additional_keys; "
                        f"labels would overwrite each other")


def to_dict(cfg: DatasetConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
