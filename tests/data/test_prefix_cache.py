"""The template-prefix shortcut gives exactly the ids of tokenizing the whole prompt, or stays off."""
from __future__ import annotations

import json

import pytest

from mindrl.data.prefix_cache import build_plan
from mindrl.data.templates import get_template, load_templates
from mindrl.data.tokenization import encode
from tests.conftest import shared_path

TRICKY = ["\nLeading newline", "  two spaces", "\tTab", "plain", "'s contraction", "ends with newline\n",
          "has <|im_end|> inside", "<|im_start|>starts with a token", "ends with <|im_", "im_end|> tail",
          "\u0301combining accent first", "数字123和\n\n换行", "<｜User｜>deepseek token", "x", "12345678",
          "$\\frac{1}{2}$ \\boxed{}", "\r\nCRLF", "\u00a0no-break space", "trailing spaces   "]


def shortcut_ids(plan, tok, question):
    return plan.ids(encode(tok, [question])[0])


@pytest.mark.parametrize("name", ["qwen", "qwen_r1", "qwen_r1_zh", "empty"])
def test_exact_for_qwen_templates(qwen_tok, name):
    template = get_template(name)
    plan = build_plan(template, qwen_tok, encode)
    assert plan is not None
    render = template.renderer(qwen_tok)
    used = 0
    for q in TRICKY:
        full = encode(qwen_tok, [render(q, {})])[0]
        if plan.applies(q):
            used += 1
            assert shortcut_ids(plan, qwen_tok, q) == full, q
    assert used >= 10
    # The unsafe cases are the ones refused (for templates whose question follows a newline).
    if name != "empty":
        assert not plan.applies("\nLeading newline") and not plan.applies("  two spaces")
    assert not plan.applies("\u0301combining accent first") and not plan.applies("")


def test_exact_for_deepseek_templates(deepseek_tok):
    for name in ("deepseek3", "deepseek3_r1"):
        template = get_template(name)
        plan = build_plan(template, deepseek_tok, encode)
        assert plan is not None and plan.head_ids[0] == deepseek_tok.bos_token_id
        render = template.renderer(deepseek_tok)
        for q in TRICKY:
            if plan.applies(q):
                assert shortcut_ids(plan, deepseek_tok, q) == encode(deepseek_tok, [render(q, {})])[0], q
        # after an added token (<｜User｜>) leading whitespace is safe
        assert plan.applies("\nLeading newline") and not plan.newline_seam


def byte_level_tokenizer(*added: str):
    """A tiny byte-level BPE (no merges) with Qwen's pre-tokenizer and the given special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mindrl.data.prefix_cache import KNOWN_SPLITS

    qwen = next(p for p in KNOWN_SPLITS if p.startswith("(?i:") and r"\p{N}|" in p)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(qwen), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in added])
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_added_token_straddling_a_seam_is_refused():
    tok = byte_level_tokenizer("<|im_start|>", "<|im_end|>", "abc<|im_end|>")
    template = get_template("qwen")
    plan = build_plan(template, tok, encode)
    assert plan is not None and plan.tail_starts == ("abc",)
    question = "it ends with abc"
    full = encode(tok, [template.renderer(tok)(question, {})])[0]
    assert tok.convert_tokens_to_ids("abc<|im_end|>") in full  # one token spans question and template
    assert shortcut_ids(plan, tok, question) != full and not plan.applies(question)
    assert plan.applies("it ends with ab")
    assert shortcut_ids(plan, tok, "it ends with ab") == encode(tok, [template.renderer(tok)("it ends with ab", {})])[0]


def test_exact_on_real_questions(qwen_tok):
    questions = [json.loads(line)["problem"] for line in
                 shared_path("data", "deepscaler", "deepscaler_subset_2000.jsonl").read_text().splitlines()]
    questions += [r["original_text"] for r in json.loads(shared_path("data", "math23k", "math23k_test.json")
                                                         .read_text(encoding="utf-8"))[:300]]
    template = get_template("qwen_r1")
    plan = build_plan(template, qwen_tok, encode)
    short = [q for q in questions if plan.applies(q)]
    assert len(short) > 0.99 * len(questions)
    render = template.renderer(qwen_tok)
    assert [plan.ids(ids) for ids in encode(qwen_tok, short)] == encode(qwen_tok, [render(q, {}) for q in short])


def test_off_where_not_provably_exact(qwen_tok, deepseek_tok, tmp_path):
    templates = load_templates()
    # label slots, chat_template mode, plain text after the question, role markers not added tokens
    for name in ("countdown_r1", "countdown_r1_zh", "chat_template", "r1_zero"):
        assert build_plan(templates[name], qwen_tok, encode) is None, name
    assert build_plan(templates["qwen_r1"], deepseek_tok, encode) is None  # <|im_end|> is plain text there
    assert build_plan(templates["llama3"], qwen_tok, encode) is None
    # A head that ends mid-line ("Q: ") could merge with the question: off.
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"inline": {"user_format": "Q: {{content}}<|im_end|>",
                                           "assistant_format": "{{content}}"}}))
    assert build_plan(get_template("inline", path), qwen_tok, encode) is None


def test_off_for_unknown_pre_tokenizers():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    assert build_plan(get_template("qwen"), tok, encode) is None
