"""A version's manifest may list files in one subdirectory (a Hugging Face checkpoint's `hf/`), checksummed
like the rest, and never a path that leaves the version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.errors import CheckpointError
from app.store import publish_version, save_checkpoint_files, verify_version
from tests.conftest import publish_tiny_version, tiny_model, tiny_tokenizer


def rewrite_manifest(version: Path, **files: str) -> None:
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["files"].update(files)
    (version / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "name", ["../CURRENT", "sub/../../CURRENT", "/etc/passwd", "a/b/c", ".hidden", "hf/.x"]
)
def test_a_manifest_naming_a_path_outside_the_version_is_refused(tmp_path: Path, name: str) -> None:
    version = publish_tiny_version(tmp_path / "store", "v1")
    rewrite_manifest(version, **{name: "0" * 64})
    with pytest.raises(CheckpointError, match="outside the version"):
        verify_version(version)


def test_files_in_a_subdirectory_are_listed_and_checked(tmp_path: Path) -> None:
    def write(directory: Path) -> None:
        save_checkpoint_files(
            directory, tiny_model(), tiny_tokenizer(), {"reward_mean": 0.0, "reward_std": 1.0}
        )
        (directory / "extra").mkdir()
        (directory / "extra" / "notes.txt").write_text("hello")

    version = publish_version(tmp_path / "store", write, version="v1")
    assert "extra/notes.txt" in verify_version(version)["files"]
    (version / "extra" / "notes.txt").write_text("changed")
    with pytest.raises(CheckpointError, match="sha256"):
        verify_version(version)
