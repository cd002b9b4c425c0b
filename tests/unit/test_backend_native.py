"""The native backend: exact ids at admission, a refusal that names the text at fault, forward in order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.backends import EncodeError, RewardBackend
from app.backends.native import packed_rows
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
    assert version.backend.packs_inputs  # on the CPU: batches cost their real tokens


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

    for method in ("forward", "forward_packed"):  # the accelerator's path and the CPU's
        monkeypatch.setattr(version.backend.model, method, out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        version.backend.forward(version.backend.encode(["p"], ["r"]))


def test_packed_rows_grow_to_few_counts_and_by_at_most_an_eighth_past_256() -> None:
    grown = {tokens: packed_rows(tokens) for tokens in range(1, 16_385)}
    assert all(rows >= tokens for tokens, rows in grown.items())
    assert all(rows - tokens < 16 for tokens, rows in grown.items() if tokens <= 256)
    assert all(rows <= tokens * 9 / 8 for tokens, rows in grown.items() if tokens > 256)
    assert len(set(grown.values())) == 64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_forward_in_either_precision_matches_the_padded_model(tiny_model_store: Path, dtype) -> None:
    version = load_version(tiny_model_store / TINY_VERSION)
    version.backend.prepare(dtype, torch.device("cpu"))
    ids = version.backend.encode(["a", "longer prompt " * 4, "x " * 100], ["b", "an answer " * 6, "y"])
    with torch.inference_mode():
        padded = version.backend.model(*version.tokenizer.pad(ids)).tolist()
    tolerance = 1e-5 if dtype == torch.float32 else 0.05  # bfloat16: rounding of an 8-bit mantissa
    assert version.backend.forward(ids) == pytest.approx(padded, abs=tolerance)
