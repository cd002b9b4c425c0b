"""Pair encoding: the bounded-cost encoding gives exactly the ids of encoding the whole texts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.store import read_current
from app.tokenizer import EncodingSpec, PairTokenizer, split_budget
from tests.conftest import tiny_tokenizer

STORE = Path(__file__).resolve().parents[2] / "model_store"
DEFAULT_TOKENIZER = STORE / read_current(STORE) / "tokenizer.json"


def encode_whole(tokenizer: PairTokenizer, prompt: str, response: str) -> list[int]:
    """The reference: tokenize both texts entirely, then truncate (what serving did before windows)."""
    p = tokenizer.tokenizer.encode(prompt, add_special_tokens=False).ids
    r = tokenizer.tokenizer.encode(response, add_special_tokens=False).ids
    keep_p, keep_r = split_budget(len(p), len(r), tokenizer.spec.max_len - 3)
    return [tokenizer.cls_id, *p[len(p) - keep_p :], tokenizer.sep_id, *r[:keep_r], tokenizer.sep_id]


def tokenizers_under_test() -> list[PairTokenizer]:
    spec = EncodingSpec(max_len=16)  # a 13-token budget: windows of 104 characters, cut often
    found = [PairTokenizer(tiny_tokenizer().tokenizer, spec)]  # byte-level BPE
    if DEFAULT_TOKENIZER.is_file():  # WordPiece with a lower-casing normalizer
        default = PairTokenizer.load(DEFAULT_TOKENIZER, EncodingSpec(16, "[CLS]", "[SEP]", "[PAD]"))
        found.append(default)
    return found


TOKENIZERS = tokenizers_under_test()
# words of every kind: prose, long rare words, digits, punctuation runs, spaces, newlines, accents, CJK
PIECES = st.sampled_from(
    [
        "the",
        "answer",
        " ",
        "  ",
        "\n",
        "\t",
        ",",
        "...",
        "'s",
        "Qzxv9wq",
        "x" * 150,
        "1234567",
        "é",
        "中文",
        "<s>",
    ]
)
TEXTS = st.lists(st.one_of(PIECES, st.text(max_size=12)), max_size=120).map("".join)


@settings(max_examples=150, deadline=None)
@given(prompt=TEXTS, response=TEXTS)
@pytest.mark.parametrize("tokenizer", TOKENIZERS, ids=lambda t: type(t.tokenizer.model).__name__)
def test_windowed_encoding_equals_encoding_the_whole_texts(
    tokenizer: PairTokenizer, prompt, response
) -> None:
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in prompt + response):  # refused: tested with the backend
        assert tokenizer.encode_pairs([prompt], [response]) == [encode_whole(tokenizer, prompt, response)]


@pytest.mark.parametrize("tokenizer", TOKENIZERS, ids=lambda t: type(t.tokenizer.model).__name__)
def test_truncation_keeps_the_prompt_end_and_the_response_start(tokenizer: PairTokenizer) -> None:
    prompt = " ".join(f"p{i}" for i in range(400)) + " latest question"
    response = "first words " + " ".join(f"r{i}" for i in range(400))
    ids = tokenizer.encode_pairs([prompt], [response])[0]
    assert len(ids) == tokenizer.spec.max_len
    assert ids == encode_whole(tokenizer, prompt, response)
    text = tokenizer.tokenizer.decode(ids)
    assert "question" in text and "first" in text
