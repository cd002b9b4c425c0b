"""The model store: a published version loads back as the same model, and a file changed after
publishing is refused before anything of it is used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.errors import CheckpointError
from app.store import list_versions, load_version, read_current, verify_version
from tests.conftest import publish_tiny_version, sample_texts, tiny_model, tiny_tokenizer


def test_a_published_version_becomes_current_and_loads_back_as_the_same_model(tmp_path: Path) -> None:
    directory = publish_tiny_version(tmp_path, "v1", seed=3)
    assert (read_current(tmp_path), list_versions(tmp_path)) == ("v1", ["v1"])

    loaded = load_version(directory, "cpu", manifest=verify_version(directory))

    prompts, responses = sample_texts(4, seed=7), sample_texts(4, seed=8)
    with torch.inference_mode():
        expected = tiny_model(seed=3)(*tiny_tokenizer().encode_batch(prompts, responses)).tolist()
    served = loaded.backend.forward(loaded.backend.encode(prompts, responses))
    assert loaded.version == "v1"
    assert served == pytest.approx(expected, abs=1e-5)


def test_publishing_without_making_current_leaves_current_alone(tmp_path: Path) -> None:
    publish_tiny_version(tmp_path, "v1")
    publish_tiny_version(tmp_path, "v2", seed=2, make_current=False)
    assert read_current(tmp_path) == "v1"
    assert sorted(list_versions(tmp_path)) == ["v1", "v2"]


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "config.json", "metrics.json"])
def test_a_file_changed_after_publishing_is_refused(tmp_path: Path, name: str) -> None:
    directory = publish_tiny_version(tmp_path, "v1")
    with open(directory / name, "ab") as changed:
        changed.write(b" ")
    with pytest.raises(CheckpointError, match=f"{name}: sha256"):
        verify_version(directory)
    with pytest.raises(CheckpointError, match="does not match the manifest"):
        load_version(directory)
