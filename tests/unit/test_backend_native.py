"""The native backend: exact ids at admission, a refusal that names the text at fault, forward in order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.backends import EncodeError, RewardBackend
from app.backends.warmup import forward_raw
from app.store import load_version
from tests.conftest import TINY_MAX_LEN, TINY_VERSION


@pytest.fixture(scope="module")
def version(tiny_model_store: Path):
    return load_version(tiny_model_store / TINY_VERSION)


def test_native_backend_implements_the_backend_interface(version) -> None:
    assert isinstance(version.backend, RewardBackend)
    assert version.backend.kind == "native"
    assert version.backend.max_len == TINY_MAX_LEN


def test_encode_gives_the_ids_the_model_reads_truncated_to_max_len(version) -> None:
    ids = version.backend.encode(["How do I boil an egg?", "long " * 500], ["Nine minutes.", "answer " * 500])
    assert ids == version.tokenizer.encode_pairs(
        ["How do I boil an egg?", "long " * 500], ["Nine minutes.", "answer " * 500]
    )
    assert len(ids[1]) == TINY_MAX_LEN


@pytest.mark.parametrize(
    ("prompts", "responses", "index", "field"),
    [
        (["p", "p"], ["fine", "\ud800"], 1, "response"),
        (["p", "a\udc00b", "p"], ["r", "r", "r"], 1, "prompt"),
        (["ok", "ok", "ok"], ["ok", "ok", "tail \udbff"], 2, "response"),
    ],
)
def test_encode_names_the_item_and_field_with_an_unpaired_surrogate(
    version, prompts, responses, index, field
) -> None:
    with pytest.raises(EncodeError) as refused:
        version.backend.encode(prompts, responses)
    assert (refused.value.index, refused.value.field) == (index, field)
    assert "surrogate" in refused.value.reason


def test_forward_returns_rewards_in_input_order_whatever_the_lengths(version) -> None:
    prompts, responses = ["short", "a much longer prompt " * 5, "mid prompt"], ["x", "y " * 30, "z z z"]
    ids = version.backend.encode(prompts, responses)
    together = version.backend.forward(ids)
    alone = [version.backend.forward([one])[0] for one in ids]
    assert together == pytest.approx(alone, abs=1e-4)
    assert together == forward_raw(version, prompts, responses)


def test_out_of_memory_is_raised_for_the_batcher_to_split_and_is_safe_without_cuda(
    version, monkeypatch
) -> None:
    def out_of_memory(*_args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(version.backend.model, "forward", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        version.backend.forward(version.backend.encode(["p"], ["r"]))
