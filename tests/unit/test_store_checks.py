"""Checks of a version before anything is allocated for it: manifest and config shapes, calibration,
architecture bounds, the safetensors header against the architecture and the memory budget, and no
path out of the store."""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from app.errors import CheckpointError
from app.store import (
    MAX_SAFETENSORS_HEADER_BYTES,
    MAX_TENSORS,
    load_version,
    read_current,
    set_current,
    sha256_file,
    write_json_atomic,
)
from tests.conftest import publish_tiny_version


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return publish_tiny_version(tmp_path_factory.mktemp("pristine"), "v1")


@pytest.fixture
def version(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy of a sound tiny version in its own store, to tamper with."""
    return Path(shutil.copytree(pristine, tmp_path / "store" / "v1"))


def rehash(directory: Path) -> None:
    """Recompute the manifest's checksums, so that only the defect under test remains."""
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"] = {name: sha256_file(directory / name) for name in manifest["files"]}
    write_json_atomic(directory / "manifest.json", manifest)


def rewrite_json(directory: Path, name: str, change: Callable[[dict], object]) -> None:
    path = directory / name
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))
    if name != "manifest.json":
        rehash(directory)


def with_metrics(**fields: object) -> Callable[[dict], dict]:
    return lambda metrics: {**metrics, **fields}


def refusal(directory: Path, **kwargs: object) -> str:
    with pytest.raises(CheckpointError) as refused:
        load_version(directory, **kwargs)
    return refused.value.message


@pytest.mark.parametrize(
    ("change", "reason"),
    [(with_metrics(reward_std="abc"), "reward_std must be a finite number"),
     (with_metrics(reward_mean=float("-inf")), "reward_mean must be a finite number"),
     (with_metrics(reward_mean=float("nan")), "reward_mean must be a finite number"),
     (with_metrics(reward_std=0.0), "reward_std must be > 0"),
     (with_metrics(reward_std=-2.0), "reward_std must be > 0"),
     (with_metrics(reward_std=True), "reward_std must be a finite number"),
     (lambda metrics: [], "not a JSON object")],
    ids=["std-text", "mean-minus-infinity", "mean-nan", "std-zero", "std-negative", "std-bool", "a-list"],
)  # fmt: skip
def test_calibration_must_be_finite_with_a_positive_std(version: Path, change, reason: str) -> None:
    rewrite_json(version, "metrics.json", change)
    assert reason in refusal(version)


@pytest.mark.parametrize(
    ("change", "reason"),
    [(lambda manifest: [], "not a JSON object"),
     (lambda manifest: {**manifest, "files": []}, "`files` must map"),
     (lambda manifest: {**manifest, "files": {k: 1 for k in manifest["files"]}}, "`files` must map"),
     (lambda manifest: {**manifest, "version": ["v1"]}, "`version` must be a string")],
    ids=["a-list", "files-a-list", "digest-a-number", "version-a-list"],
)  # fmt: skip
def test_manifest_must_be_an_object_of_the_expected_shape(version: Path, change, reason: str) -> None:
    rewrite_json(version, "manifest.json", change)
    assert reason in refusal(version)


def test_config_that_is_not_an_object_is_refused(version: Path) -> None:
    rewrite_json(version, "config.json", lambda config: {**config, "model": [1, 2]})
    assert "must be objects" in refusal(version)
    rewrite_json(version, "config.json", lambda config: [config])
    assert "not a JSON object" in refusal(version)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [("layers", 300, "exceeds the bounds"), ("vocab_size", 10**9, "exceeds the bounds"),
     ("hidden", 64.0, "must be an integer"), ("max_len", True, "must be an integer")],
)  # fmt: skip
def test_architecture_out_of_bounds_is_refused_before_loading(version: Path, field, value, reason) -> None:
    rewrite_json(
        version, "config.json", lambda config: {**config, "model": {**config["model"], field: value}}
    )
    assert reason in refusal(version)


def test_weights_that_do_not_match_the_architecture_are_refused(version: Path) -> None:
    # one layer fewer in the config: the file holds tensors the model does not have
    rewrite_json(version, "config.json", lambda config: {**config, "model": {**config["model"], "layers": 1}})
    message = refusal(version)
    assert "does not match config.json" in message and "encoder.layers.1" in message


def test_a_model_over_the_memory_budget_is_refused(version: Path) -> None:
    assert "REWARD_MAX_MODEL_BYTES" in refusal(version, max_model_bytes=1024)
    assert load_version(version).version == "v1"  # the default budget fits


def write_safetensors(path: Path, header_json: bytes, data: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(header_json)) + header_json + data)


@pytest.mark.parametrize(
    "defect", ["oversized-header", "too-many-tensors", "length-past-the-end", "not-json"]
)
def test_a_hostile_safetensors_header_is_refused_cheaply(version: Path, defect: str) -> None:
    weights = version / "model.safetensors"
    if defect == "oversized-header":
        write_safetensors(weights, b"{" + b" " * MAX_SAFETENSORS_HEADER_BYTES + b"}")
    elif defect == "too-many-tensors":
        entry = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        write_safetensors(
            weights, json.dumps({f"t{i}": entry for i in range(MAX_TENSORS + 1)}).encode(), b"\0" * 4
        )
    elif defect == "length-past-the-end":
        weights.write_bytes(struct.pack("<Q", 67 * 2**20) + b"{}")
    else:
        write_safetensors(weights, b"{not json")
    rehash(version)
    assert "model.safetensors" in refusal(version)


def test_a_version_directory_symlinked_out_of_the_store_is_refused(pristine: Path, tmp_path: Path) -> None:
    outside = Path(shutil.copytree(pristine, tmp_path / "elsewhere" / "v1"))
    store = tmp_path / "store"
    store.mkdir()
    (store / "v1").symlink_to(outside, target_is_directory=True)
    assert "resolves outside the model store" in refusal(store / "v1")


def test_a_file_symlinked_out_of_the_store_is_refused(version: Path, tmp_path: Path) -> None:
    outside = tmp_path / "metrics.json"
    shutil.copy(version / "metrics.json", outside)
    (version / "metrics.json").unlink()
    (version / "metrics.json").symlink_to(outside)
    assert "resolves outside the model store" in refusal(version)


def test_a_current_symlinked_out_of_the_store_is_refused(version: Path, tmp_path: Path) -> None:
    store = version.parent
    set_current(store, "v1")
    assert read_current(store) == "v1"
    outside = tmp_path / "CURRENT"
    outside.write_text("v1\n")
    os.replace(store / "CURRENT", tmp_path / "old-current")
    (store / "CURRENT").symlink_to(outside)
    with pytest.raises(CheckpointError, match="outside the model store"):
        read_current(store)


def test_refusals_do_not_name_the_store_path(version: Path) -> None:
    rewrite_json(version, "metrics.json", with_metrics(reward_std=0.0))
    assert str(version.parent) not in refusal(version)
