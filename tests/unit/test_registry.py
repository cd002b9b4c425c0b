"""ModelRegistry: loading is apart from activation, a swap keeps the version it replaced, and a version
that fails to load never displaces the live one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.errors import CheckpointError
from app.registry import ModelRegistry
from tests.conftest import publish_nan_version, publish_tiny_version


@pytest.fixture
def store(tmp_path: Path) -> Path:
    publish_tiny_version(tmp_path, "v1")
    return tmp_path


@pytest.fixture
def registry(store: Path) -> Iterator[ModelRegistry]:
    registry = ModelRegistry(store, device="cpu", dtype="float32")
    yield registry
    registry.close()


def test_a_loaded_version_serves_only_once_activated(registry: ModelRegistry) -> None:
    loaded = registry.load()
    assert loaded.version == "v1" and not registry.ready and registry.current is None
    assert registry.activate(loaded) is None
    assert registry.ready and registry.current is loaded


def test_activating_a_new_version_keeps_the_one_it_replaced_as_previous(
    registry: ModelRegistry, store: Path
) -> None:
    first = registry.load()
    registry.activate(first)
    publish_tiny_version(store, "v2", seed=2)
    second = registry.load()
    assert registry.activate(second) is first
    assert (registry.current.version, registry.previous.version) == ("v2", "v1")


def test_a_version_that_fails_its_warm_up_keeps_the_live_one_and_says_why(
    registry: ModelRegistry, store: Path
) -> None:
    registry.activate(registry.load())
    publish_nan_version(store, "broken")
    with pytest.raises(CheckpointError, match="non-finite rewards on canary inputs"):
        asyncio.run(registry.load_current())
    assert registry.current.version == "v1"
    assert "broken" in registry.last_error and "non-finite" in registry.last_error


def test_a_store_without_current_is_refused_with_how_to_fix_it(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, device="cpu", dtype="float32")
    try:
        with pytest.raises(CheckpointError, match="publish a model first"):
            registry.load()
    finally:
        registry.close()
