"""Everything decided before a model is loaded: the model and tokenizer, the layout, the eval sets.

`build_plan(...)` checks every input and raises `EvalError` with one clear message on the first
problem: a missing model directory or weights, an unloadable tokenizer, a layout that does not fit
the model or the number of processes, an unknown dataset or scorer ("did you mean"), an override
for a dataset that is not evaluated. Dataset configs are preprocessed here (into
`OUTPUT/prompts/LABEL_*`), so bad data fails before the ranks start too. The result, an `EvalPlan`,
is plain data that is handed to every rank.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mindrl.data.config import CONFIG_DIR, FIELDS, available_configs
from mindrl.data.errors import DataError, did_you_mean

# Default scorer per dataset handler (the handler says what kind of answer the labels hold).
DEFAULT_SCORERS = {"r1_math": "acc", "gsm8k": "gsm8k", "countdown": "countdown"}
STRICT_SCORERS = {"r1_math": "base_acc"}  # --strict-format: the answer only counts in R1 format


class EvalError(ValueError):
    """Bad evaluation input: printed as one `error: ...` line, before any model is loaded."""


@dataclass
class DatasetPlan:
    label: str  # name in the table, the JSONL file name and per-dataset options
    source: str  # "prompt set PREFIX" or the dataset config it was preprocessed from
    prefix: str  # the prompt set that is evaluated
    scorer: str  # the accuracy scorer
    options: dict[str, dict[str, Any]]  # per scorer: keyword options (e.g. format/base_acc prefix)
    n: int  # samples per prompt (k of avg@k / pass@k)
    items: int  # prompts evaluated (after --limit)
    stop: list[str] = field(default_factory=list)  # stop strings (template stop words, --stop)
    stop_token_ids: list[int] = field(default_factory=list)  # stop words that are single tokens


@dataclass
class EvalPlan:
    model: str
    model_kind: str  # "hf" | "megatron"
    hf_config: dict[str, Any]
    tokenizer: str
    datasets: list[DatasetPlan]
    output: str
    tp: int = 1
    pp: int = 1
    ep: int = 1
    nproc: int = 1
    backend: str = "auto"
    dtype: str = "fp32"
    vocab_divisible_by: int = 128
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = -1
    max_tokens: int = 2048
    seed: int = 1234
    max_batch_size: int = 256
    reward_timeout: float = 5.0
    reward_workers: int | None = None
    adapter: str | None = None  # a peft LoRA folder or a mindrl LoRA checkpoint root, on top of `model`


def per_dataset(values: Sequence[str] | None, flag: str, cast: Callable[[str], Any], default: Any,
                labels: Sequence[str]) -> dict[str, Any]:
    """`--flag V` sets every dataset, `--flag LABEL=V` one of them (later wins); label -> value."""
    out = {label: default for label in labels}
    for raw in values or []:
        label, sep, text = raw.partition("=")
        targets = list(labels)
        if sep:
            if label not in out:
                raise EvalError(f"{flag} {raw}: {label!r} is not one of the evaluated datasets "
                                f"({', '.join(labels)}).{did_you_mean(label, labels)}")
            targets = [label]
        else:
            text = raw
        try:
            value = cast(text)
        except ValueError:
            raise EvalError(f"{flag} {raw}: cannot read {text!r}") from None
        for t in targets:
            out[t] = value
    return out


def resolve_dataset(spec: str) -> tuple[str, str, str]:
    """(label, kind, where): kind "prompt_set" (a preprocessed PREFIX) or "config" (a dataset config)."""
    label, sep, rest = spec.partition("=")
    if sep and label and "/" not in label:
        spec = rest
    else:
        label = ""
    if Path(spec + "_meta.json").is_file():
        return label or Path(spec).name, "prompt_set", spec
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return label or path.stem, "config", str(path)
    if (CONFIG_DIR / f"{spec}.yaml").is_file():
        return label or spec, "config", spec
    names = available_configs()
    raise EvalError(f"unknown dataset {spec!r}: neither a preprocessed prompt set (no {spec}_meta.json) nor a "
                    f"dataset config.{did_you_mean(spec, names)} Configs: {', '.join(names)}")


def check_model(model: str) -> tuple[str, dict[str, Any], str]:
    """(kind, HF config, default tokenizer dir) of an HF directory or a megatron checkpoint."""
    from mindrl.checkpoint.convert import LAYOUT_FILE, HFSource, MegatronSource
    from mindrl.checkpoint.hf_mapping import Mapping
    from mindrl.models import load_hf_config

    d = Path(model)
    if not d.is_dir():
        raise EvalError(f"--model {model}: no such directory")
    try:
        if (d / LAYOUT_FILE).is_file():
            if not (d / "hf" / "config.json").is_file():
                raise EvalError(f"--model {model}: megatron checkpoint without hf/config.json (write it with "
                                f"tools/convert_ckpt.py or the trainer)")
            source = MegatronSource(d)  # reads headers only: every rank file and tensor shape is checked
            for f in source.files:
                f.close()
            return "megatron", dict(source.hf_cfg), str(d / "hf")
        if (d / "config.json").is_file():
            hf = dict(load_hf_config(d))
            if not list(d.glob("*.safetensors")):
                raise EvalError(f"--model {model}: config.json but no *.safetensors weights")
            HFSource(d, Mapping(hf)).st.close()  # names and shapes against config.json
            return "hf", hf, str(d)
    except EvalError:
        raise
    except (ValueError, KeyError, OSError, NotImplementedError) as err:
        raise EvalError(f"--model {model}: {err}") from None
    hint = ""
    if (d / "checkpoints" / LAYOUT_FILE).is_file():
        hint = f" Did you mean {d / 'checkpoints'} (the trainer's checkpoints)?"
    raise EvalError(f"--model {model}: neither an HF model (config.json + *.safetensors) nor a megatron checkpoint "
                    f"({LAYOUT_FILE}, from tools/convert_ckpt.py or a trainer's checkpoints/ dir).{hint}")


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise EvalError(f"--tokenizer {path}: no such directory")
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - transformers raises many types
        raise EvalError(f"cannot load a tokenizer from {path} ({type(err).__name__}: {str(err)[:200]}); "
                        f"pass --tokenizer DIR") from None


def check_layout(hf: dict[str, Any], tp: int, pp: int, ep: int, nproc: int, divisible_by: int) -> int:
    """Raise unless the layout fits the model and `nproc`; returns the model's vocab size."""
    from mindrl.models import ParallelLayout, plan_model

    layout = ParallelLayout(tp=tp, pp=pp, ep=ep)
    try:
        plan = plan_model(hf, layout, make_vocab_size_divisible_by=divisible_by)
    except (ValueError, KeyError, NotImplementedError) as err:
        raise EvalError(f"layout tp={tp} pp={pp} ep={ep}: {err}") from None
    c = plan.config
    errors = layout.check(num_layers=c.num_layers, num_heads=c.num_attention_heads,
                          num_kv_heads=c.num_query_groups or c.num_attention_heads, num_experts=plan.args.num_experts,
                          world_size=nproc)
    if errors:
        raise EvalError(f"layout tp={tp} pp={pp} ep={ep} with --nproc {nproc}: " + "; ".join(errors))
    return plan.vocab_size


def scorer_options(scorer: str, prompt_tail: str) -> dict[str, dict[str, Any]]:
    """`format` is always scored too; both get `prefix: "<think>"` when prompts end inside a thought."""
    from mindrl.rewards import get_scorer

    names = [scorer] if scorer == "format" else [scorer, "format"]
    inside_thought = prompt_tail.rstrip().endswith("<think>")
    options: dict[str, dict[str, Any]] = {}
    for name in names:
        if inside_thought and "prefix" in inspect.signature(get_scorer(name)).parameters:
            options[name] = {"prefix": "<think>"}
        else:
            options[name] = {}
    return options


def stop_words(words: Sequence[str], tokenizer: Any) -> tuple[list[str], list[int]]:
    """Words that are one token of the vocabulary become stop token ids, the rest stop strings."""
    vocab = tokenizer.get_vocab()
    strings, ids = [], []
    for w in words:
        if w in vocab:
            ids.append(int(vocab[w]))
        else:
            strings.append(w)
    return strings, ids


def preprocess_config(label: str, where: str, overrides: list[str], template: str | None, tokenizer_dir: str,
                      tokenizer: Any, prompts_dir: Path, log: Callable[[str], None]) -> str:
    """Run a dataset config through mindrl.data.preprocess; returns the prompt-set prefix."""
    from mindrl.data.config import load_config
    from mindrl.data.preprocess import preprocess

    keys = [o.split("=", 1)[0] for o in overrides]
    if "tokenizer_name_or_path" in keys:
        raise EvalError(f"{label}.tokenizer_name_or_path: the prompts are tokenized with --tokenizer; set that instead")
    extra = [f"tokenizer_name_or_path={tokenizer_dir}"]
    if "output_prefix" not in keys:
        extra.append(f"output_prefix={prompts_dir / label}")
    if template:
        extra.append(f"prompt_type={template}")
    try:
        cfg = load_config(where, overrides + extra)
        if "train" in Path(cfg.input).name:
            log(f"[eval] warning: {label} reads {cfg.input}, a training file; pass {label}.input=... for the test set")
        preprocess(cfg, tokenizer=tokenizer, progress=False, log=log)
    except DataError as err:
        raise EvalError(f"dataset {label}: {err}") from None
    return cfg.output_prefix


def split_overrides(overrides: Sequence[str], labels: Sequence[str]) -> dict[str, list[str]]:
    """`LABEL.key=value` for one dataset config, `key=value` for all of them."""
    out: dict[str, list[str]] = {label: [] for label in labels}
    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep or not key:
            raise EvalError(f"override {o!r} must look like DATASET.key=value or key=value")
        head, dot, rest = key.partition(".")
        if head in out and dot:
            out[head].append(f"{rest}={value}")
        elif head in FIELDS:
            for label in labels:
                out[label].append(o)
        else:
            raise EvalError(f"override {o!r}: {head!r} is neither an evaluated dataset ({', '.join(labels)}) nor a "
                            f"dataset config key.{did_you_mean(head, list(labels) + FIELDS)}")
    return out


def build_plan(*, model: str, tokenizer: str | None, datasets: Sequence[str], overrides: Sequence[str],
               templates: Sequence[str] | None, scorers: Sequence[str] | None, ns: Sequence[str] | None,
               limits: Sequence[str] | None, strict_format: bool, stop: Sequence[str], output: str,
               prompts_dir: str | None = None, log: Callable[[str], None] = print,
               **sampling_and_layout: Any) -> EvalPlan:
    """Check everything and preprocess dataset configs (into `prompts_dir`, default OUTPUT/prompts);
    `sampling_and_layout` are EvalPlan fields."""
    from mindrl.data import PromptDataset
    from mindrl.rewards import resolve_scorers

    resolved = [resolve_dataset(s) for s in datasets]
    labels = [r[0] for r in resolved]
    if not labels:
        raise EvalError("--datasets is empty")
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise EvalError(f"dataset label(s) {dupes} appear twice; name them: --datasets a=PATH,b=PATH")
    per_overrides = split_overrides(overrides, labels)
    template_of = per_dataset(templates, "--template", str, None, labels)
    scorer_of = per_dataset(scorers, "--scorer", str, None, labels)
    n_of = per_dataset(ns, "--n", int, 1, labels)
    limit_of = per_dataset(limits, "--limit", int, 0, labels)
    for label, kind, where in resolved:
        if kind == "prompt_set" and (per_overrides[label] or template_of[label]):
            raise EvalError(f"dataset {label} is a preprocessed prompt set ({where}): its template and data are fixed; "
                            f"overrides and --template apply to dataset configs only")
        if n_of[label] < 1 or limit_of[label] < 0:
            raise EvalError(f"dataset {label}: --n must be >= 1 and --limit >= 0")
        if scorer_of[label]:
            try:
                resolve_scorers([scorer_of[label]])
            except ValueError as err:
                raise EvalError(f"--scorer for {label}: {err}") from None
    if sampling_and_layout.get("max_tokens", 1) < 1 or sampling_and_layout.get("temperature", 0) < 0:
        raise EvalError("--max-tokens must be >= 1 and --temperature >= 0")
    if not 0 < sampling_and_layout.get("top_p", 1.0) <= 1:
        raise EvalError("--top-p must be in (0, 1]")

    adapter = sampling_and_layout.pop("adapter", None)
    model, adapter = _split_lora_checkpoint(model, adapter)
    kind, hf, default_tok = check_model(model)
    if adapter is not None:
        from mindrl.checkpoint.lora_io import read_adapter
        from mindrl.checkpoint.tensor_io import CheckpointError

        try:
            read_adapter(adapter, hf)  # config, names and shapes against the base model
        except (CheckpointError, OSError, ValueError, KeyError) as err:
            raise EvalError(f"--adapter {adapter}: {err}") from None
    tokenizer_dir = tokenizer or default_tok
    tok = load_tokenizer(tokenizer_dir)
    vocab = check_layout(hf, sampling_and_layout.get("tp", 1), sampling_and_layout.get("pp", 1),
                         sampling_and_layout.get("ep", 1), sampling_and_layout.get("nproc", 1),
                         sampling_and_layout.get("vocab_divisible_by", 128))
    if len(tok) > vocab:
        raise EvalError(f"tokenizer {tokenizer_dir} has {len(tok)} tokens, the model's vocabulary only {vocab}: "
                        f"wrong --tokenizer?")

    out_dir = Path(output)
    plans = []
    for label, kind_d, where in resolved:
        prefix = where
        if kind_d == "config":
            prefix = preprocess_config(label, where, per_overrides[label], template_of[label], tokenizer_dir, tok,
                                       Path(prompts_dir) if prompts_dir else out_dir / "prompts", log)
        try:
            ds = PromptDataset(prefix, shuffle=False)
        except DataError as err:
            raise EvalError(f"dataset {label}: {err}") from None
        try:
            ds.check_tokenizer(tok)
        except DataError as err:
            raise EvalError(f"dataset {label}: {err}; pass --tokenizer {ds.meta['tokenizer']['name_or_path']} "
                            f"(or the same tokenizer elsewhere), or evaluate a dataset config instead") from None
        items = min(len(ds), limit_of[label] or len(ds))
        handler = ds.meta.get("config", {}).get("handler_name", "r1_math")
        scorer = scorer_of[label] or (STRICT_SCORERS if strict_format else DEFAULT_SCORERS).get(
            handler, DEFAULT_SCORERS.get(handler, "acc"))
        tail = tok.decode([int(t) for t in ds[0].prompt_ids[-16:]])
        strings, ids = stop_words(list(ds.meta.get("stop_words", [])) + list(stop), tok)
        source = f"prompt set {prefix}" if kind_d == "prompt_set" else f"dataset config {where}"
        plans.append(DatasetPlan(label=label, source=source, prefix=str(prefix), scorer=scorer,
                                 options=scorer_options(scorer, tail), n=n_of[label], items=items, stop=strings,
                                 stop_token_ids=ids))
    return EvalPlan(model=model, model_kind=kind, hf_config=json.loads(json.dumps(hf)), tokenizer=tokenizer_dir,
                    datasets=plans, output=str(out_dir), adapter=adapter, **sampling_and_layout)


def _split_lora_checkpoint(model: str, adapter: str | None) -> tuple[str, str | None]:
    """A LoRA training checkpoint root as --model means: its recorded base (`actor_config.load`) plus
    its adapters."""
    from mindrl.checkpoint.lora_io import LoRACheckpoint, is_lora_checkpoint

    if not Path(model).is_dir() or not is_lora_checkpoint(model):
        return model, adapter
    if adapter is not None:
        raise EvalError(f"--model {model} holds LoRA adapters only; pass the base model as --model and it as --adapter")
    base = LoRACheckpoint(model).base_load
    if not base:
        raise EvalError(f"--model {model} holds LoRA adapters only and its run loaded no base checkpoint "
                        f"(actor_config.load unset): pass --model <base> --adapter {model}")
    return base, model
