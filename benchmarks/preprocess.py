"""Preprocessing throughput: mindrl.data.preprocess against a plain `datasets.map` + tokenizer baseline.

    python benchmarks/preprocess.py            # the 2,000-row DeepScaleR subset, Qwen2.5 tokenizer
    python benchmarks/preprocess.py --input data/raw/deepscaler.json --tokenizer /models/Qwen2.5-7B

Every method goes from the raw file to the same written prompt set (render the template, tokenize,
drop prompts over seq_length, write .bin/.idx + labels + meta through the same writer), and they
must produce byte-identical token files. Loading the tokenizer, hashing it and importing megatron
happen once before timing (the same one-off cost for every method). The BPE cache is cleared before
each run, so no run profits from words a previous run already split. Runs are interleaved; the
median and the best run are reported, since other processes on the machine move the numbers around.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mindrl.data.config import load_config  # noqa: E402
from mindrl.data.preprocess import preprocess, tokenizer_sha256  # noqa: E402
from mindrl.data.readers import read_rows  # noqa: E402
from mindrl.data.templates import get_template  # noqa: E402
from mindrl.data.tokenization import load_tokenizer  # noqa: E402
from mindrl.data.writer import indexed_dataset_module, write_prompt_set  # noqa: E402

SHARED = Path(os.environ.get("MINDRL_SHARED", REPO.parent / "shared"))


def baseline(cfg: Any, tok: Any, batched: bool) -> None:
    """What one would write with `datasets`: Dataset + map(tokenizer) + the same writer.

    Rows are handed to datasets in memory (Dataset.from_list, no Arrow cache on disk) and the
    fingerprinting of the map function is skipped, both of which favour the baseline.
    """
    import datasets

    rows, _ = read_rows(cfg.input)
    render = get_template(cfg.prompt_type).renderer(tok)
    ds = datasets.Dataset.from_list([{"problem": r["problem"], "answer": r["answer"]} for r in rows])
    # new_fingerprint: skip datasets' hashing of the function, which pickles the whole tokenizer
    # (~2 s here); a plain script pays that too, but it is not tokenization.
    if batched:
        ds = ds.map(lambda b: {"input_ids": tok([render(p, {}) for p in b["problem"]],
                                                add_special_tokens=False)["input_ids"]},
                    batched=True, new_fingerprint="tokenized")
    else:
        ds = ds.map(lambda r: {"input_ids": tok(render(r["problem"], {}), add_special_tokens=False)["input_ids"]},
                    new_fingerprint="tokenized")
    ds = ds.map(lambda r, i: {"row": i, "n": len(r["input_ids"])}, with_indices=True, new_fingerprint="lengths")
    ds = ds.filter(lambda r: r["n"] <= cfg.seq_length, new_fingerprint="kept")
    write_prompt_set(cfg.output_prefix, (np.asarray(ids) for ids in ds["input_ids"]),
                     (json.dumps({"row": r, "labels": {"answer": a}}, ensure_ascii=False)
                      for r, a in zip(ds["row"], ds["answer"])),
                     {"counts": {"kept": len(ds)}}, vocab_size=len(tok))


def run_all(args: argparse.Namespace, tok: Any, out: Path) -> None:
    def cfg(name: str) -> Any:
        return load_config("deepscaler", [f"input={args.input}", f"tokenizer_name_or_path={args.tokenizer}",
                                          f"output_prefix={out / name}", f"prompt_type={args.prompt_type}",
                                          f"workers={args.workers}"])

    methods: dict[str, Callable[[], None]] = {
        "datasets.map + tokenizer (per row)": lambda: baseline(cfg("plain"), tok, batched=False),
        "datasets.map + tokenizer (batched)": lambda: baseline(cfg("batched"), tok, batched=True),
        "mindrl.data.preprocess": lambda: preprocess(cfg("mindrl"), tokenizer=tok, progress=False,
                                                     log=lambda *a: None),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats + 1):  # the first round warms up imports and file caches
        for name, fn in methods.items():
            tok.backend_tokenizer.model._clear_cache()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    shas = {json.loads((out / f"{n}_meta.json").read_text())["files"]["bin"]["sha256"]
            for n in ("plain", "batched", "mindrl")}
    assert len(shas) == 1, "the methods wrote different token ids"

    start = time.perf_counter()
    total = 0
    for i in range(10_000_000):  # a yardstick for how busy the machine is right now
        total += i
    loop_s = time.perf_counter() - start
    rows = json.loads((out / "mindrl_meta.json").read_text())["counts"]["read"]
    plain = statistics.median(times["datasets.map + tokenizer (per row)"][1:])
    print(f"{rows} prompts from {args.input}\ntokenizer {args.tokenizer}, template {args.prompt_type}, "
          f"workers {args.workers}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
          f"a Python loop of 1e7 additions took {loop_s:.2f} s; median of {args.repeats} runs "
          f"(identical outputs checked)\n")
    print(f"| {'method':<36} | median s | prompts/s | best s | prompts/s | vs per-row map (median) |")
    print(f"|{'-' * 38}|---------:|----------:|-------:|----------:|------------------------:|")
    for name, values in times.items():
        median, best = statistics.median(values[1:]), min(values[1:])
        print(f"| {name:<36} | {median:>8.3f} | {rows / median:>9,.0f} | {best:>6.3f} | {rows / best:>9,.0f} "
              f"| {plain / median:>22.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default=str(SHARED / "data/deepscaler/deepscaler_subset_2000.jsonl"))
    parser.add_argument("--tokenizer", default=str(SHARED / "models/Qwen2.5-Instruct-tokenizer"))
    parser.add_argument("--prompt-type", default="qwen_r1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for path in (args.input, args.tokenizer):
        if not Path(path).exists():
            sys.exit(f"{path} not found: pass --input / --tokenizer (or set MINDRL_SHARED)")

    import datasets

    datasets.disable_progress_bars()
    tok = load_tokenizer(args.tokenizer)
    tokenizer_sha256(tok)  # one-off, remembered per tokenizer object
    indexed_dataset_module()
    with tempfile.TemporaryDirectory(prefix="mindrl-bench-") as tmp:
        run_all(args, tok, Path(tmp))


if __name__ == "__main__":
    main()
