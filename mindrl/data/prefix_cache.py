"""Tokenize the template once and only the question per row, where that gives the same ids.

A rendered prompt is A + question + B, with A and B the same for every row. For the R1 templates
A is most of the prompt (the instruction), and tokenizing it again for every row is ~2/3 of all
tokenizer time. ids(A + Q + B) == ids(A) + ids(Q) + ids(B) holds exactly when the tokenizer splits
the text at both seams no matter what Q is. That is guaranteed, for the tokenizers we allow here:

* at an added token (``<|im_end|>``, ``<｜User｜>``): the tokenizer cuts the text at added tokens
  before normalizing or pre-tokenizing anything, provided the token does not strip whitespace
  (lstrip/rstrip) and no added token straddles the seam (checked per row);
* after a newline when Q starts with a non-space, non-combining character, for the byte-level BPE
  pre-tokenizers listed in KNOWN_SPLITS (Qwen2/2.5/3, Llama 3, DeepSeek-V3/R1): none of their
  regexes has a lookbehind, and the only alternatives that can match a newline are runs of
  whitespace ending in newlines (``\s*[\r\n]+``, tried before ``\s+(?!\S)``) or a newline run
  ending a punctuation match, which stop before a non-space. So a match always ends at the seam,
  the same match as at the end of A alone, and the scan after it restarts exactly as on Q alone.
  NFC cannot compose across "\n" + a starter either.

Anything else (other pre-tokenizers, label slots inside the template, a question starting with
whitespace, chat_template mode) takes the plain path: render the whole prompt and tokenize it.
The plan also checks itself on probe questions before it is used, as a guard against a wrong
argument above (a failed probe disables it).
"""
from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from typing import Any, Optional

# The Split regexes of the byte-level BPE tokenizers for which the newline argument was checked.
_CL100K = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")  # Llama 3
KNOWN_SPLITS = {
    _CL100K,
    _CL100K.replace(r"\p{N}{1,3}", r"\p{N}"),  # Qwen2 / Qwen2.5 / Qwen3
    r"\p{N}{1,3}",  # DeepSeek-V3/R1, first of three
    "[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
}
PROBES = ("Hello world", "123 apples", "'s it", "中文题目：", "$x^2$", "(1) Find", "\\frac{1}{2}", "Ünïcödé",
          "<|im_end|>x", "a\n\n b ", "99", "、")


def _known_pre_tokenizer(backend: Any) -> bool:
    if backend.pre_tokenizer is None or type(backend.model).__name__ != "BPE":
        return False
    # Not GPT-2's ByteLevel(use_regex=True): its regex has no `\s*[\r\n]+` alternative, so "\n\n" at
    # the end of A splits differently with and without a question after it.
    spec = json.loads(backend.pre_tokenizer.__getstate__())
    if spec.get("type") != "Sequence":
        return False
    *splits, last = spec["pretokenizers"]
    if last.get("type") != "ByteLevel" or last.get("use_regex") or last.get("add_prefix_space"):
        return False
    return bool(splits) and all(
        s.get("type") == "Split" and s.get("behavior") == "Isolated" and not s.get("invert")
        and s.get("pattern", {}).get("Regex") in KNOWN_SPLITS for s in splits)


def _known_normalizer(backend: Any) -> bool:
    if backend.normalizer is None:
        return True
    spec = json.loads(backend.normalizer.__getstate__())
    return spec.get("type") == "NFC" or (spec.get("type") == "Sequence" and not spec.get("normalizers"))


@dataclass
class PrefixPlan:
    head_ids: list[int]
    tail_ids: list[int]
    newline_seam: bool  # A ends with "\n" (not with an added token): the question's first char matters
    head_rests: tuple[str, ...]  # rest of an added token whose start ends A: Q may not start with one
    tail_starts: tuple[str, ...]  # start of an added token whose rest begins B: Q may not end with one

    def applies(self, question: str) -> bool:
        if not question or unicodedata.combining(question[0]):  # NFC could compose it with A's end
            return False
        if self.newline_seam and question[0].isspace():
            return False
        # An added token straddling a seam (or spanning the whole question) would be cut apart.
        return not (question.startswith(self.head_rests) or question.endswith(self.tail_starts)
                    or any(rest.startswith(question) for rest in self.head_rests))

    def ids(self, question_ids: list[int]) -> list[int]:
        return self.head_ids + question_ids + self.tail_ids


def build_plan(template: Any, tokenizer: Any, encode: Any) -> Optional[PrefixPlan]:
    """A PrefixPlan when the shortcut is exact for this template and tokenizer, else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if template.mode != "text" or backend is None or template.slots() - {"content", "bos_token", "eos_token"}:
        return None
    if getattr(backend, "encode_special_tokens", False):  # added tokens are not cut out first then
        return None
    if "content" not in template.slots() or not (_known_pre_tokenizer(backend) and _known_normalizer(backend)):
        return None
    marker = "\x00MINDRL\x00"
    head, _, tail = template.renderer(tokenizer)(marker, {}).partition(marker)
    added = list(backend.get_added_tokens_decoder().values())
    if any("\n" in t.content or t.single_word for t in added):
        return None
    ends_with_token = [t for t in added if head.endswith(t.content)]
    starts_with_token = [t for t in added if tail.startswith(t.content)]
    if head and not (head.endswith("\n") or (ends_with_token and not any(t.rstrip for t in ends_with_token))):
        return None
    if tail and not (starts_with_token and not any(t.lstrip for t in starts_with_token)):
        return None
    contents = [t.content for t in added]
    cut = [(c[:k], c[k:]) for c in contents for k in range(1, len(c))]
    plan = PrefixPlan(
        head_ids=encode(tokenizer, [head])[0] if head else [],
        tail_ids=encode(tokenizer, [tail])[0] if tail else [],
        newline_seam=bool(head) and not ends_with_token,
        head_rests=tuple(rest for start, rest in cut if head.endswith(start)),
        tail_starts=tuple(start for start, rest in cut if tail.startswith(rest)))
    probes = [p for p in PROBES if plan.applies(p)]
    full = encode(tokenizer, [head + p + tail for p in probes])
    short = encode(tokenizer, probes)
    if any(plan.ids(s) != f for s, f in zip(short, full)):
        return None
    return plan
