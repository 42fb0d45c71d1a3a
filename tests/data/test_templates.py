"""Templates: the shipped registry, rendering, validation, and agreement with real chat templates."""
from __future__ import annotations

import json

import pytest

from mindrl.data.errors import DataError
from mindrl.data.templates import DEFAULT_TEMPLATE_FILE, get_template, load_templates
from tests.conftest import shared_path

R1 = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
      "The assistant first thinks about the reasoning process in the mind and then provides the user with "
      "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
      "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.")
COUNTDOWN = ("Using the numbers [44, 19, 35], create an equation that equals 98. You can use basic arithmetic "
             "operations (+, -, *, /) and each number can only be used once. Show your work in <think> </think> "
             "tags. And return the final equation in <answer> </answer> tags, for example <answer> (1 + 2) / 3 "
             "</answer>.")


def test_registry_is_a_plain_dict_with_the_required_templates():
    templates = load_templates()
    assert type(templates) is dict
    required = {"empty", "qwen", "qwen_r1", "deepseek3", "deepseek3_r1", "llama3", "countdown_r1",
                "countdown_r1_zh", "chat_template"}
    assert required <= set(templates)
    assert json.loads(DEFAULT_TEMPLATE_FILE.read_text(encoding="utf-8")).keys() == templates.keys()


def test_text_templates_render_by_hand():
    q = "What is $\\frac{1}{2}$ of {{x}} in {4}?"  # braces in the question must survive verbatim
    render = {name: t.renderer() for name, t in load_templates().items() if t.mode == "text"}
    assert render["empty"](q, {}) == q
    assert render["qwen"](q, {}) == (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                     f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
    assert render["qwen_r1"](q, {}) == (
        f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{R1} Put your final "
        f"answer within \\boxed{{}}.\n{q}<|im_end|>\n<|im_start|>assistant\n")
    assert render["deepseek3"](q, {}) == f"<｜User｜>{q}<｜Assistant｜>"  # no tokenizer: empty bos
    assert render["deepseek3_r1"](q, {}) == f"{R1}<｜User｜>{q}<｜Assistant｜>"
    assert render["r1_zero"](q, {}) == f"{R1} User: {q}. Assistant:"
    assert render["llama3"](q, {}) == (f"<|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
                                       f"<|start_header_id|>assistant<|end_header_id|>\n\n")
    countdown = {"nums": [44, 19, 35], "target": 98}
    assert render["countdown_r1"]("", countdown) == (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process in the mind and then provides the user with "
        f"the answer.\nUser: {COUNTDOWN}\nAssistant: Let me solve this step by step.\n<think>")
    zh = render["countdown_r1_zh"]("", countdown)
    assert "[44, 19, 35]" in zh and "98" in zh and zh.endswith("助手：让我们逐步解决这个问题。\n<think>")


def test_bos_slot_comes_from_the_tokenizer():
    class Tok:
        bos_token, eos_token = "<s>", "</s>"

    assert get_template("deepseek3").renderer(Tok())("hi", {}) == "<s><｜User｜>hi<｜Assistant｜>"


def _write(tmp_path, specs):
    path = tmp_path / "templates.json"
    path.write_text(json.dumps(specs), encoding="utf-8")
    return path


def test_new_template_and_inheritance_need_no_code(tmp_path):
    path = _write(tmp_path, {"mine": {"user_format": "Q: {{content}}\n", "assistant_format": "A: {{content}}",
                                      "assistant_prefix": "<think>", "stop_words": ["Q:"]},
                             "mine_sys": {"base": "mine", "system": "Be brief.", "system_format": "{{content}}\n"}})
    assert get_template("mine", path).renderer()("2+2?", {}) == "Q: 2+2?\nA: <think>"
    child = get_template("mine_sys", path)
    assert child.renderer()("2+2?", {}) == "Be brief.\nQ: 2+2?\nA: <think>"
    assert child.stop_words == ("Q:",)


@pytest.mark.parametrize("specs, message", [
    ({"t": {"user_fromat": "{{content}}"}}, "Did you mean 'user_format'"),
    ({"t": {"base": "u"}, "u": {"base": "t"}}, "inherits from itself"),
    ({"t": {"base": "nope"}}, "unknown base 'nope'"),
    ({"t": {"assistant_format": "A:"}}, "assistant_format needs a {{content}} slot"),
    ({"t": {"mode": "jinja"}}, "mode 'jinja'"),
    ({"t": {"stop_words": "<|im_end|>"}}, "must be a list of strings"),
])
def test_bad_template_files(tmp_path, specs, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("{", r"\{")):
        load_templates(_write(tmp_path, specs))


def test_unknown_template_name():
    with pytest.raises(DataError, match="Did you mean 'qwen_r1'"):
        get_template("qwen_r2")


def test_qwen_template_equals_the_qwen25_base_chat_template(qwen_tok):
    base = json.loads(shared_path("models", "Qwen2.5-0.5B", "tokenizer_config.json").read_text())["chat_template"]
    for question in ["Hi", "求 $x^2=4$ 的解。\n\n(A) 2  (B) -2"]:
        expected = qwen_tok.apply_chat_template([{"role": "user", "content": question}], chat_template=base,
                                                tokenize=False, add_generation_prompt=True)
        assert get_template("qwen").renderer(qwen_tok)(question, {}) == expected


def test_deepseek3_template_equals_the_v3_chat_template(deepseek_tok):
    v3 = json.loads(shared_path("models", "DeepSeek-V3", "tokenizer_config.json").read_text())["chat_template"]
    for messages, name in [([], "deepseek3"), ([{"role": "system", "content": R1}], "deepseek3_r1")]:
        messages = messages + [{"role": "user", "content": "1+1=?"}]
        expected = deepseek_tok.apply_chat_template(messages, chat_template=v3, tokenize=False,
                                                    add_generation_prompt=True)
        assert expected.startswith("<｜begin▁of▁sentence｜>")
        assert get_template(name).renderer(deepseek_tok)("1+1=?", {}) == expected


def test_chat_template_mode_continues_the_assistant_prefix(qwen_tok, tmp_path):
    render = get_template("chat_template").renderer(qwen_tok)
    assert render("Hi", {}) == qwen_tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                                            add_generation_prompt=True)
    path = _write(tmp_path, {"chat_r1": {"mode": "chat_template", "system": "Think first.",
                                         "user_format": "{{content}} Answer in \\boxed{}.",
                                         "assistant_prefix": "<think>\n"}})
    text = get_template("chat_r1", path).renderer(qwen_tok)("Hi", {})
    assert text == ("<|im_start|>system\nThink first.<|im_end|>\n<|im_start|>user\nHi Answer in \\boxed{}."
                    "<|im_end|>\n<|im_start|>assistant\n<think>\n")


def test_chat_template_mode_needs_a_chat_template():
    with pytest.raises(DataError, match="has none"):
        get_template("chat_template").renderer(object())
