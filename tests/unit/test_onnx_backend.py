"""ONNX Runtime path: an exported graph scores any batch and sequence length as torch float32 does
(masking included), is cached under a key of the weights and tools, and is exported again when the
cached file does not match its recorded digest."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from app.backends.choice import Candidates, measure_and_choose, native_path  # noqa: E402
from app.backends.onnx import OnnxRunner, cached_graph, export_key  # noqa: E402
from tests.conftest import sample_texts, tiny_model, tiny_tokenizer  # noqa: E402

MANIFEST = {"files": {"model.safetensors": "a" * 64, "config.json": "b" * 64}}


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cached_graph(tiny_model(), MANIFEST, tmp_path_factory.mktemp("onnx"), quantized=False)


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_the_graph_scores_any_batch_and_length_as_torch_float32(graph: Path, batch: int) -> None:
    tokenizer = tiny_tokenizer()
    ids = tokenizer.encode_pairs(sample_texts(batch, seed=batch), sample_texts(batch, seed=batch + 50))
    torch_rewards = native_path("float32", tiny_model(), tokenizer).forward(ids)
    onnx_rewards = OnnxRunner(graph, tokenizer, threads=1).forward(ids)
    assert len({len(i) for i in ids}) > 1 or batch == 1  # padded rows: the mask must hide the padding
    assert onnx_rewards == pytest.approx(torch_rewards, abs=1e-4)


def test_a_cached_graph_is_reused_and_a_damaged_one_exported_again(graph: Path) -> None:
    stamp = graph.stat().st_mtime_ns
    assert cached_graph(tiny_model(), MANIFEST, graph.parents[1], quantized=False) == graph
    assert graph.stat().st_mtime_ns == stamp  # reused, not exported again
    graph.write_bytes(graph.read_bytes()[:-10])  # a torn or altered file
    assert cached_graph(tiny_model(), MANIFEST, graph.parents[1], quantized=False) == graph
    assert graph.stat().st_mtime_ns != stamp
    assert OnnxRunner(graph, tiny_tokenizer(), threads=1).session is not None  # a valid graph again


def test_the_cache_key_changes_with_the_weights_and_the_variant() -> None:
    other_weights = {"files": {**MANIFEST["files"], "model.safetensors": "c" * 64}}
    keys = {
        export_key(MANIFEST, "float32"),
        export_key(other_weights, "float32"),
        export_key(MANIFEST, "int8"),
    }
    assert len(keys) == 3


def test_the_onnx_candidate_passes_the_guard_against_torch(tmp_path: Path) -> None:
    candidates = Candidates(tiny_model(), tiny_tokenizer(), MANIFEST, tmp_path)
    execution = measure_and_choose(
        candidates.build("float32"), {"onnx": lambda: candidates.build("onnx")}, tiny_tokenizer(), 0.5
    )
    onnx = next(c for c in execution.candidates if c.path == "onnx")
    assert onnx.accepted and onnx.max_deviation_std < 1e-3 and onnx.items_per_s > 0
    assert not candidates.build("onnx").packs_inputs  # padded graph inputs
    assert candidates.build("float32").packs_inputs  # the torch CPU forward packs them
