"""Preprocessing real data with real tokenizers: decoded prompts equal hand-rendered templates,
labels and extra keys survive exactly, filtering/selection/splits are right, output is what
megatron-core reads."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mindrl.data import tokenization
from mindrl.data.prompt_dataset import PromptDataset
from mindrl.data.writer import indexed_dataset_module, output_paths, sha256_file
from tests.conftest import shared_path
from tests.data.conftest import run

R1 = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
      "The assistant first thinks about the reasoning process in the mind and then provides the user with "
      "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
      "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.")
R1_ZH = ("用户与助手之间的对话。用户提出一个问题，助手来解决它。助手首先在脑海中思考推理过程，然后向用户给出答案。"
         "推理过程和答案分别包含在 <think> </think> 和 <answer> </answer> 标签中，即 <think> 推理过程 </think> "
         "<answer> 答案 </answer>。请把最终答案写在 \\boxed{} 中。")
QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def qwen_r1_by_hand(question: str) -> str:
    return (f"{QWEN_SYSTEM}<|im_start|>user\n{R1} Put your final answer within \\boxed{{}}.\n{question}"
            f"<|im_end|>\n<|im_start|>assistant\n")


def jsonl(*parts: str) -> list[dict]:
    return [json.loads(line) for line in shared_path(*parts).read_text(encoding="utf-8").splitlines()]


def decoded(tok, prefix: str) -> tuple[PromptDataset, list[str]]:
    ds = PromptDataset(prefix, shuffle=False)
    return ds, [tok.decode(ds[i].prompt_ids.tolist(), skip_special_tokens=False) for i in range(len(ds))]


@pytest.fixture(scope="module")
def deepscaler(qwen_tok, tmp_path_factory):
    path = shared_path("data", "deepscaler", "deepscaler_subset_2000.jsonl")
    meta, prefix = run("deepscaler", qwen_tok, tmp_path_factory.mktemp("ds") / "ds", input=path)
    return meta, prefix


def test_deepscaler_prompts_and_labels(deepscaler, qwen_tok):
    meta, prefix = deepscaler
    raw = jsonl("data", "deepscaler", "deepscaler_subset_2000.jsonl")
    ds, texts = decoded(qwen_tok, prefix)
    assert len(ds) == len(raw) == meta["counts"]["kept"] == 2000
    # A known row, spelled out: no code shared with the template renderer.
    assert raw[0]["problem"].startswith("Given that the function $f(x)$ satisfies: $4f(x)f(y)=f(x+y)+f(x-y)$")
    assert texts[0] == qwen_r1_by_hand(raw[0]["problem"])
    assert ds[0].labels == {"answer": "- \\frac{1}{4}"}
    assert texts == [qwen_r1_by_hand(r["problem"]) for r in raw]
    assert [ds[i].labels for i in range(len(ds))] == [{"answer": r["answer"]} for r in raw]
    assert [ds[i].row for i in range(len(ds))] == list(range(2000))
    # ids are exactly what the tokenizer gives for the whole text through its ordinary call
    # (the pipeline tokenizes the template once and only the question per row where that is exact)
    expected = qwen_tok([qwen_r1_by_hand(r["problem"]) for r in raw], add_special_tokens=False)["input_ids"]
    assert [ds[i].prompt_ids.tolist() for i in range(len(ds))] == expected


def test_meta_and_megatron_readback(deepscaler, qwen_tok):
    meta, prefix = deepscaler
    paths = output_paths(prefix)
    assert meta["template"]["name"] == "qwen_r1" and meta["stop_words"] == ["<|im_end|>", "<|endoftext|>"]
    assert meta["tokenizer"]["vocab_size"] == len(qwen_tok) and len(meta["tokenizer"]["sha256"]) == 64
    assert meta["counts"] == {"read": 2000, "selected": 2000, "kept": 2000, "dropped_too_long": 0}
    assert meta["label_keys"] == ["answer"] and meta["dtype"] == "int32"
    for part in ("bin", "idx", "labels"):
        assert meta["files"][part]["sha256"] == sha256_file(paths[part])
    on_disk = json.loads(open(paths["meta"], encoding="utf-8").read())
    assert on_disk == meta
    indexed = indexed_dataset_module().IndexedDataset(paths["prompt"])
    assert len(indexed) == 2000 and len(indexed.document_indices) == 2001  # one document per prompt
    assert indexed.sequence_lengths.sum() == meta["prompt_tokens"]["total"]
    PromptDataset(prefix).check_tokenizer(qwen_tok)


def test_math23k_chinese_answers_and_extra_keys(qwen_tok, tmp_path):
    path = shared_path("data", "math23k", "math23k_valid.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    _, prefix = run("math23k", qwen_tok, tmp_path / "m", input=path)
    ds, texts = decoded(qwen_tok, prefix)
    assert texts[0] == (f"{QWEN_SYSTEM}<|im_start|>user\n{R1_ZH}\n一共有280kg水果糖，每袋装(1/4)kg，已经装完了这些糖果的(3/4)．"
                        f"已经装完了多少袋？<|im_end|>\n<|im_start|>assistant\n")
    assert ds[205].labels == {"answer": "25%", "id": "7888", "equation": "x=(360-270)/360"}
    labels = [ds[i].labels for i in range(len(ds))]
    assert labels == [{"answer": r["ans"], "id": r["id"], "equation": r["equation"]} for r in raw]
    answers = {lab["answer"] for lab in labels}
    assert any("((" in a and not a.startswith("((") for a in answers)  # mixed numbers like 19((3)/(4))
    assert texts == [f"{QWEN_SYSTEM}<|im_start|>user\n{R1_ZH}\n{r['original_text']}<|im_end|>\n"
                     f"<|im_start|>assistant\n" for r in raw]


def test_deepseek_r1_zero_template_with_bos(deepseek_tok, tmp_path):
    path = shared_path("data", "eval", "aime24.jsonl")
    raw = jsonl("data", "eval", "aime24.jsonl")
    _, prefix = run("aime24", deepseek_tok, tmp_path / "a", input=path, prompt_type="deepseek3_r1")
    ds, texts = decoded(deepseek_tok, prefix)
    assert ds[0].prompt_ids[0] == deepseek_tok.bos_token_id
    assert texts == [f"<｜begin▁of▁sentence｜>{R1}<｜User｜>{r['problem']}<｜Assistant｜>" for r in raw]
    assert [ds[i].labels for i in range(len(ds))] == [{"answer": r["answer"], "id": r["id"]} for r in raw]


@pytest.mark.parametrize("prompt_type, head, tail", [
    ("countdown_r1", "User: Using the numbers {nums}, create an equation that equals {target}. ",
     "Assistant: Let me solve this step by step.\n<think>"),
    ("countdown_r1_zh", "用户：使用数字 {nums}，构造一个结果等于 {target} 的等式。", "助手：让我们逐步解决这个问题。\n<think>"),
])
def test_countdown_prompts(qwen_tok, tmp_path, prompt_type, head, tail):
    path = shared_path("data", "countdown", "countdown_test_1024.jsonl")
    raw = jsonl("data", "countdown", "countdown_test_1024.jsonl")
    _, prefix = run("countdown", qwen_tok, tmp_path / "c", input=path, prompt_type=prompt_type)
    ds, texts = decoded(qwen_tok, prefix)
    assert len(ds) == 1024
    for i in (0, 1, 1023):
        assert head.format(nums=raw[i]["nums"], target=raw[i]["target"]) in texts[i]
        assert texts[i].endswith(tail)
    assert [ds[i].labels for i in range(len(ds))] == raw


def test_gsm8k_final_answer_and_float_answers(qwen_tok, tmp_path):
    _, prefix = run("gsm8k", qwen_tok, tmp_path / "g", input=shared_path("data", "gsm8k", "train.jsonl"),
                    split="train[340:370]")
    raw = jsonl("data", "gsm8k", "train.jsonl")[340:370]
    ds = PromptDataset(prefix, shuffle=False)
    assert ds[5].labels == {"answer": "1080", "solution": raw[5]["answer"]}  # '#### 1,080'
    assert [ds[i].row for i in range(len(ds))] == list(range(30))
    _, prefix = run("amc23", qwen_tok, tmp_path / "amc", input=shared_path("data", "eval", "amc23.jsonl"))
    first = PromptDataset(prefix, shuffle=False)[0].labels["answer"]
    assert first == 27.0 and isinstance(first, float)  # kept as the float the file holds


def test_seq_length_filter_select_and_split(qwen_tok, tmp_path):
    path = shared_path("data", "deepscaler", "deepscaler_subset_2000.jsonl")
    raw = jsonl("data", "deepscaler", "deepscaler_subset_2000.jsonl")
    lengths = [len(ids) for ids in qwen_tok([qwen_r1_by_hand(r["problem"]) for r in raw],
                                            add_special_tokens=False)["input_ids"]]
    meta, prefix = run("deepscaler", qwen_tok, tmp_path / "f", input=path, seq_length=180)
    too_long = [i for i, n in enumerate(lengths) if n > 180]
    assert 0 < len(too_long) < 2000
    assert meta["counts"]["dropped_too_long"] == len(too_long) and meta["dropped_rows"] == too_long
    ds = PromptDataset(prefix, shuffle=False)
    assert [ds[i].row for i in range(len(ds))] == [i for i, n in enumerate(lengths) if n <= 180]
    assert max(len(ds[i].prompt_ids) for i in range(len(ds))) <= 180

    meta_a, prefix_a = run("deepscaler", qwen_tok, tmp_path / "s1", input=path, select=50, seed=7)
    meta_b, _ = run("deepscaler", qwen_tok, tmp_path / "s2", input=path, select=50, seed=7)
    meta_c, _ = run("deepscaler", qwen_tok, tmp_path / "s3", input=path, select=50, seed=8)
    rows = [PromptDataset(prefix_a, shuffle=False)[i].row for i in range(50)]
    assert rows == sorted(rows) and len(set(rows)) == 50
    assert meta_a["files"]["labels"]["sha256"] == meta_b["files"]["labels"]["sha256"]
    assert meta_a["files"]["labels"]["sha256"] != meta_c["files"]["labels"]["sha256"]
    labels = PromptDataset(prefix_a, shuffle=False)[3].labels
    assert labels == {"answer": raw[rows[3]]["answer"]}

    meta, _ = run("deepscaler", qwen_tok, tmp_path / "sp", input=path, split="train[10%:20%]")
    assert meta["counts"]["read"] == 200


@pytest.mark.parametrize("config, parts", [("countdown", ("countdown", "countdown_test_1024.jsonl")),
                                           ("deepscaler", ("deepscaler", "deepscaler_subset_2000.jsonl"))])
def test_worker_pool_gives_identical_output(qwen_tok, tmp_path, monkeypatch, config, parts):
    path = shared_path("data", *parts)
    one, _ = run(config, qwen_tok, tmp_path / "w1", input=path, workers=1, split="train[:700]")
    monkeypatch.setattr(tokenization, "CHUNK", 64)  # 11 chunks: enough for the pool to be used
    calls = []
    real_pool = tokenization.mp.get_context("fork").Pool

    class Ctx:
        def Pool(self, *args, **kwargs):
            calls.append(args)
            return real_pool(*args, **kwargs)

    monkeypatch.setattr(tokenization.mp, "get_context", lambda method: Ctx())
    two, _ = run(config, qwen_tok, tmp_path / "w2", input=path, workers=2, split="train[:700]")
    assert calls == [(2,)]
    for part in ("bin", "idx", "labels"):
        assert one["files"][part]["sha256"] == two["files"][part]["sha256"]


def test_parquet_nested_fields_and_csv(qwen_tok, tmp_path):
    path = shared_path("data", "deepscaler", "deepscaler_subset_2000_verl.parquet")
    _, prefix = run("deepscaler", qwen_tok, tmp_path / "p", input=path, prompt_type="qwen", split="train[:20]",
                    **{"map_keys.prompt": "prompt.0.content", "map_keys.answer": "reward_model.ground_truth"})
    raw = jsonl("data", "deepscaler", "deepscaler_subset_2000.jsonl")
    ds, texts = decoded(qwen_tok, prefix)
    assert texts[0].startswith(f"{QWEN_SYSTEM}<|im_start|>user\n{raw[0]['problem']}")
    assert [ds[i].labels["answer"] for i in range(20)] == [r["answer"] for r in raw[:20]]

    # a null extra key is data (kept as null); a null answer is not (see test_bad_input)
    rows = [{"problem": "1+1?", "answer": "2", "note": None}, {"problem": "2+2?", "answer": "4", "note": "x"}]
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text("\n".join(json.dumps(r) for r in rows))
    _, prefix = run("deepscaler", qwen_tok, tmp_path / "n", input=nulls, dataset_additional_keys="[note]")
    ds = PromptDataset(prefix, shuffle=False)
    assert [ds[i].labels for i in range(2)] == [{"answer": "2", "note": None}, {"answer": "4", "note": "x"}]

    csv_path = tmp_path / "cd.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["nums", "target"])
        writer.writerows([["[44, 19, 35]", "98"], ["[1, 2, 3, 4]", "24"]])
    _, prefix = run("countdown", qwen_tok, tmp_path / "csv", input=csv_path)
    ds = PromptDataset(prefix, shuffle=False)
    assert [ds[i].labels for i in range(2)] == [{"nums": [44, 19, 35], "target": 98},
                                                {"nums": [1, 2, 3, 4], "target": 24}]
    assert np.array_equal(ds[0].prompt_ids, PromptDataset(prefix, shuffle=False)[0].prompt_ids)
