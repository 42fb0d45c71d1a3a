"""Typed configs (dataclasses composed by Hydra) in MindSpeed-RL's sections, and their validation.

Owns: the schema (`schema.py`), loading with unknown-key detection (`loader.py`), and
`validate()`/`check_config()` which reject bad configs before any worker starts.
May import: hydra/omegaconf, mindrl.models (for the HF config and layout checks), mindrl.algorithms
(registry names) and mindrl.backends (what the hardware can run: `generate_config.packed_linear`).
"""
from mindrl.config.loader import ConfigError, config_from_dict, load_config
from mindrl.config.schema import (ActorConfig, GenerateConfig, MegatronTrainingConfig, MindRLConfig, ModelConfig,
                                  RLConfig, SamplingConfig)
from mindrl.config.validate import actor_layout, check_config, resolve_hf_config, validate

__all__ = ["ActorConfig", "ConfigError", "GenerateConfig", "MegatronTrainingConfig", "MindRLConfig", "ModelConfig",
           "RLConfig", "SamplingConfig", "actor_layout", "check_config", "config_from_dict", "load_config",
           "resolve_hf_config", "validate"]
