"""Load configs: Hydra composes YAML from `configs/`, then we build the typed dataclasses.

Unknown keys are errors with a "did you mean" (OmegaConf's own message names the key but not
the fix), so a typo like `n_sample_per_prompt` never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Mapping

from mindrl.config.schema import MindRLConfig

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A config problem; the message has one line per problem."""


# MindSpeed-RL keys that mindrl deliberately does not have, with where their job is done instead.
NOT_HERE = {
    "megatron_training.dataset_additional_keys": "label keys are chosen at preprocessing: set "
                                                 "dataset_additional_keys in the dataset config (docs/data.md)",
}


def _unknown_key_message(path: str, key: str, known: list[str]) -> str:
    if f"{path}{key}" in NOT_HERE:
        return f"{path}{key}: not a mindrl key; {NOT_HERE[path + key]}"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{path}{key}: unknown key{hint}"


def from_dict(cls: type, data: Mapping[str, Any] | None, path: str = "", errors: list[str] | None = None) -> Any:
    """Build dataclass `cls` from a mapping, collecting unknown keys and type problems in `errors`."""
    own_errors = errors if errors is not None else []
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            own_errors.append(_unknown_key_message(path, key, names))
            continue
        ftype = hints[key]
        if dataclasses.is_dataclass(ftype):
            if value is not None and not isinstance(value, Mapping):
                own_errors.append(f"{path}{key}: expected a mapping, got {type(value).__name__}")
                continue
            kwargs[key] = from_dict(ftype, value, f"{path}{key}.", own_errors)
        else:
            kwargs[key] = _coerce(value, ftype, f"{path}{key}", own_errors)
    result = cls(**kwargs)
    if errors is None and own_errors:
        raise ConfigError("\n".join(own_errors))
    return result


def _coerce(value: Any, ftype: Any, path: str, errors: list[str]) -> Any:
    """Light type checking: numbers where numbers are expected, lists where lists are."""
    origin = typing.get_origin(ftype)
    args = [a for a in typing.get_args(ftype) if a is not type(None)]
    if value is None:
        return None
    if origin is typing.Union and len(args) == 1:
        return _coerce(value, args[0], path, errors)
    if ftype is bool and not isinstance(value, bool):
        errors.append(f"{path}: expected true/false, got {value!r}")
    elif ftype is int and (isinstance(value, bool) or not isinstance(value, int)):
        errors.append(f"{path}: expected an integer, got {value!r}")
    elif ftype is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: expected a number, got {value!r}")
        else:
            return float(value)
    elif ftype is str and not isinstance(value, str):
        errors.append(f"{path}: expected a string, got {value!r}")
    elif origin is list and not isinstance(value, (list, tuple)):
        errors.append(f"{path}: expected a list, got {value!r}")
    elif origin is list:
        return list(value)
    return value


def load_config(config_name: str, overrides: list[str] | None = None,
                config_dir: str | Path | None = None) -> MindRLConfig:
    """Compose `configs/<config_name>.yaml` (+ Hydra overrides like `rl_config.kl_coef=0.01`)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    config_dir = Path(config_dir or REPO_CONFIGS).resolve()
    if not (config_dir / f"{config_name}.yaml").is_file():
        available = sorted(p.stem for p in config_dir.glob("*.yaml"))
        close = difflib.get_close_matches(config_name, available, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"config '{config_name}' not found in {config_dir}{hint}; available: {', '.join(available)}")
    groups = {p.name for p in config_dir.iterdir() if p.is_dir() and any(p.glob("*.yaml"))}
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        composed = compose(config_name=config_name, overrides=_force_overrides(overrides or [], groups))
    data = OmegaConf.to_container(composed, resolve=True)
    return config_from_dict(data)  # type: ignore[arg-type]


def _force_overrides(overrides: list[str], groups: set[str]) -> list[str]:
    """`section.key=value` for any schema key, even one the recipe YAML leaves at its default.

    Hydra only overrides keys present in the composed YAML (others need `+`/`++`). Our schema is
    the authority on which keys exist — unknown ones are rejected with a "did you mean" right after
    composing — so plain overrides are passed as `++` (set or add). Config-group choices such as
    `model=qwen25_7b` stay as they are.
    """
    forced = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or item[0] in "+~" or key in groups:
            forced.append(item)
        else:
            forced.append("++" + item)
    return forced


def config_from_dict(data: Mapping[str, Any]) -> MindRLConfig:
    data = dict(data)
    model = data.get("model")
    if isinstance(model, Mapping) and len(model) == 1 and isinstance(next(iter(model.values())), Mapping) \
            and "hf_config" not in model and "name" not in model:
        # MindSpeed-RL style `model: {qwen25_7b: {...}}`: unwrap the single named entry.
        name, body = next(iter(model.items()))
        data["model"] = dict(body, name=body.get("name", name))
    return from_dict(MindRLConfig, data)
