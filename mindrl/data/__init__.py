"""mindrl.data: raw datasets -> tokenized prompt sets -> prompts + labels for the trainer.

Owns prompt templates (configs/model/templates.json), dataset configs (configs/datasets/*.yaml),
row handlers, the preprocessing CLI (``python -m mindrl.data.preprocess``), the Countdown task
generator (``python -m mindrl.data.countdown``) and PromptDataset, which reads the output back.
See docs/data.md.

May import: the standard library, numpy, transformers/tokenizers, datasets (and its pyarrow, for
parquet), omegaconf, tqdm, megatron.core.datasets, and mindrl.utils.io (atomic writes); nothing
else from mindrl. transformers and megatron are imported lazily, inside the functions that need
them, because each costs seconds.
"""
from mindrl.data.config import DatasetConfig, load_config
from mindrl.data.errors import DataError
from mindrl.data.handlers import HANDLERS, get_handler
from mindrl.data.prompt_dataset import PromptDataset, PromptSample
from mindrl.data.templates import Template, get_template, load_templates

__all__ = ["DataError", "DatasetConfig", "HANDLERS", "PromptDataset", "PromptSample", "Template",
           "get_handler", "get_template", "load_config", "load_templates"]
