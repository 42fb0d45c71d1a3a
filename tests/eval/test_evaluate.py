"""`python -m mindrl.evaluate` on the tiny CPU demo: the numbers are meaningless, the plumbing is real.

A module fixture prepares the demo once (as tests/trainer/test_grpo_e2e.py does); the HF warm start
and its megatron conversion are evaluated in subprocesses, as a user would run them. Bad inputs
call `main()` in-process: they must fail before any model is loaded.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli, shared_path

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.megatron
ROW_FIELDS = {"dataset", "index", "row", "sample", "prompt", "completion", "labels", "reward", "reward_parts",
              "finish_reason", "stop_reason", "response_length", "prompt_length"}


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return run_cli(cmd, timeout)


@pytest.fixture(scope="module")
def demo(tiny_demo: Path) -> Path:
    return tiny_demo  # prepared once per session in tests/conftest.py


def evaluate(demo: Path, model: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mindrl.evaluate", "--model", str(demo / model), "--tokenizer", str(demo / "tokenizer"),
           "--n", "2", "--limit", "8", "--max-tokens", "16", "--temperature", "1.0", "--seed", "7",
           "--backend", "cpu", "--reward-workers", "1", "--output", str(out), *args]
    proc = run(cmd)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def hf_run(demo, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("eval_hf")
    return out, evaluate(demo, "warm_start", out, "--datasets", str(demo / "data" / "tiny"))


@pytest.fixture(scope="module")
def mg_run(demo, tmp_path_factory) -> Path:
    """The megatron conversion, on the prompt set and on the dataset-config path (tiny_demo
    re-preprocessed from the demo's tasks.jsonl with the eval tokenizer)."""
    out = tmp_path_factory.mktemp("eval_mg")
    evaluate(demo, "mg", out, "--datasets", f"{demo / 'data' / 'tiny'},tiny_demo",
             f"tiny_demo.input={demo / 'tasks.jsonl'}")
    return out


def test_per_item_jsonl_and_table(hf_run):
    out, proc = hf_run
    got = rows(out / "tiny.jsonl")
    assert len(got) == 16  # 8 prompts x 2 samples
    for r in got:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        assert set(r["reward_parts"]) == {"acc", "format"} and r["reward"] == r["reward_parts"]["acc"]
        assert r["finish_reason"] in ("stop", "length") and r["prompt"].endswith("<think>")
        assert r["response_length"] <= 16 and "answer" in r["labels"]
    assert [(r["index"], r["sample"]) for r in got] == [(i, s) for i in range(8) for s in range(2)]
    assert "avg@k" in proc.stdout and "pass@k" in proc.stdout and "tiny" in proc.stdout
    assert not list(out.glob(".*.tmp"))


def test_summary_equals_recomputation_from_jsonl(hf_run, mg_run):
    for out in (hf_run[0], mg_run):
        summary = json.loads((out / "summary.json").read_text())
        for label, d in summary["datasets"].items():
            got = rows(out / f"{label}.jsonl")
            by_item: dict[int, list[float]] = {}
            for r in got:
                by_item.setdefault(r["index"], []).append(r["reward"])
            assert d["items"] == 8 and d["samples"] == 16 and d["k"] == 2 and d["n"] == 2
            assert d["avg_at_k"] == pytest.approx(sum(r["reward"] for r in got) / len(got))
            assert d["pass_at_k"] == pytest.approx(sum(max(v) for v in by_item.values()) / len(by_item))
            assert d["mean_response_length"] == pytest.approx(sum(r["response_length"] for r in got) / 16)
            assert d["truncated"] == pytest.approx(sum(r["finish_reason"] == "length" for r in got) / 16)
            assert d["format"] == pytest.approx(sum(r["reward_parts"]["format"] for r in got) / 16)
            assert d["scorer"] == "acc" and d["scorer_options"]["format"] == {"prefix": "<think>"}


def test_hf_and_megatron_loads_give_identical_completions(hf_run, mg_run):
    a, b = rows(hf_run[0] / "tiny.jsonl"), rows(mg_run / "tiny.jsonl")
    assert [r["completion"] for r in a] == [r["completion"] for r in b]
    assert [r["finish_reason"] for r in a] == [r["finish_reason"] for r in b]


def test_dataset_config_path_gives_the_same_prompts(mg_run):
    """tiny_demo preprocessed by the eval CLI = the demo's prompt set: same prompts, same samples."""
    a, b = rows(mg_run / "tiny.jsonl"), rows(mg_run / "tiny_demo.jsonl")
    assert [r["prompt"] for r in a] == [r["prompt"] for r in b]
    assert [r["completion"] for r in a] == [r["completion"] for r in b]
    assert (mg_run / "prompts" / "tiny_demo_meta.json").is_file()
    assert "dataset config" in json.loads((mg_run / "summary.json").read_text())["datasets"]["tiny_demo"]["source"]


def test_summarize_on_hand_made_rows():
    from mindrl.eval import summarize

    def row(i: int, reward: float, length: int, finish: str) -> dict:
        return {"index": i, "reward": reward, "reward_parts": {"acc": reward, "format": 1.0}, "response_length": length,
                "finish_reason": finish}
    got = summarize([row(0, 1, 10, "stop"), row(0, 0, 20, "length"), row(1, 0, 30, "stop"), row(1, 0, 40, "stop")])
    assert got["items"] == 2 and got["samples"] == 4 and got["k"] == 2
    assert got["avg_at_k"] == 0.25 and got["pass_at_k"] == 0.5
    assert got["mean_response_length"] == 25 and got["truncated"] == 0.25 and got["format"] == 1.0


def bad(capsys, *argv: str) -> str:
    from mindrl.evaluate import main

    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_inputs_fail_before_loading(demo, tmp_path, capsys):
    tiny, tok = str(demo / "data" / "tiny"), str(demo / "tokenizer")
    base = ["--tokenizer", tok, "--output", str(tmp_path), "--backend", "cpu"]
    assert "no such directory" in bad(capsys, "--model", str(tmp_path / "nope"), "--datasets", tiny, *base)
    assert "neither an HF model" in bad(capsys, "--model", str(tmp_path), "--datasets", tiny, *base)
    err = bad(capsys, "--model", str(demo / "mg"), "--datasets", "mat500", *base)
    assert "unknown dataset 'mat500'" in err and "Did you mean 'math500'" in err
    err = bad(capsys, "--model", str(demo / "mg"), "--datasets", tiny, "--scorer", "countdwn", *base)
    assert "Did you mean 'countdown'" in err
    err = bad(capsys, "--model", str(demo / "mg"), "--datasets", tiny, "--n", "tny=4", *base)
    assert "'tny' is not one of the evaluated datasets" in err and "Did you mean 'tiny'" in err
    err = bad(capsys, "--model", str(demo / "mg"), "--datasets", tiny, "--tp", "3", "--nproc", "3", *base)
    assert "does not divide num_attention_heads" in err
    err = bad(capsys, "--model", str(demo / "mg"), "--datasets", tiny, "--tp", "2", "--nproc", "3", *base)
    assert "world size 3 is not divisible" in err
    err = bad(capsys, "--model", str(demo / "mg"), "--datasets", "tiny_demo", "tiny_demo.inpt=x", *base)
    assert "Did you mean 'input'" in err
    err = bad(capsys, "--model", str(demo / "mg"), "--datasets", tiny, "tiny.input=x", *base)
    assert "preprocessed prompt set" in err
    # A model directory's own tokenizer loads as the model's tokenizer class (Qwen2's pre-tokenizer),
    # not the demo's character tokenizer the prompts were made with: refused, with the fix.
    err = bad(capsys, "--model", str(demo / "warm_start"), "--datasets", tiny, "--output", str(tmp_path))
    assert "was tokenized with" in err and f"--tokenizer {tok}" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_help_explains():
    proc = run([sys.executable, "-m", "mindrl.evaluate", "--help"])
    assert proc.returncode == 0
    for word in ("avg@k", "pass@k", "--datasets", "LABEL.key=value", "countdown", "--strict-format", "mindrl_layout"):
        assert word in proc.stdout, word


@pytest.mark.slow
def test_two_ranks_tensor_parallel(demo, tmp_path):
    """TP=2 on two processes, loading the TP=1 megatron checkpoint (re-sliced on load)."""
    evaluate(demo, "mg", tmp_path, "--datasets", str(demo / "data" / "tiny"), "--tp", "2", "--nproc", "2")
    got = rows(tmp_path / "tiny.jsonl")
    assert len(got) == 16 and [(r["index"], r["sample"]) for r in got] == [(i, s) for i in range(8) for s in range(2)]


@pytest.mark.slow
def test_two_data_parallel_ranks(demo, tmp_path):
    evaluate(demo, "warm_start", tmp_path, "--datasets", str(demo / "data" / "tiny"), "--nproc", "2", "--limit", "7")
    got = rows(tmp_path / "tiny.jsonl")
    assert [(r["index"], r["sample"]) for r in got] == [(i, s) for i in range(7) for s in range(2)]


# slow: a 151,936-vocab model through three eval sets (~25 s); the default suite keeps the demo's eval runs
@pytest.mark.slow
def test_real_eval_sets_preprocess_with_the_qwen_tokenizer(tmp_path):
    """gsm8k test, countdown test and math500 through their dataset configs with the real Qwen2.5
    tokenizer, on a random 1-layer Qwen2 with the real 151,936-token vocabulary."""
    tok_dir = shared_path("models", "Qwen2.5-Instruct-tokenizer")
    data = shared_path("data")
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      max_position_embeddings=4096, eos_token_id=151643, bos_token_id=151643)
    model_dir = tmp_path / "qwen_tiny"
    Qwen2ForCausalLM(cfg).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tok_dir).save_pretrained(model_dir)
    out = tmp_path / "out"
    proc = run([sys.executable, "-m", "mindrl.evaluate", "--model", str(model_dir), "--tokenizer", str(tok_dir),
                "--datasets", "gsm8k,countdown,math500", f"gsm8k.input={data / 'eval' / 'gsm8k_test.jsonl'}",
                f"countdown.input={data / 'countdown' / 'countdown_test_1024.jsonl'}",
                f"math500.input={data / 'eval' / 'math500.jsonl'}", "split=train[:3]", "--limit", "2",
                "--max-tokens", "4", "--backend", "cpu", "--reward-workers", "1", "--output", str(out)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())["datasets"]
    assert {k: v["scorer"] for k, v in summary.items()} == {"gsm8k": "gsm8k", "countdown": "countdown",
                                                           "math500": "acc"}
    assert summary["countdown"]["scorer_options"]["format"] == {"prefix": "<think>"}
    assert summary["gsm8k"]["stop_token_ids"] == [151645, 151643]  # qwen template: <|im_end|>, <|endoftext|>
    first = rows(out / "gsm8k.jsonl")[0]
    assert "Janet" in first["prompt"] and first["labels"]["answer"] == "18"
    assert "nums" in rows(out / "countdown.jsonl")[0]["labels"]
