"""ModelWatcher over a real registry and tiny real checkpoints, without HTTP."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import pytest

from app.errors import CheckpointError
from app.metrics import ServiceMetrics
from app.registry import ModelRegistry
from app.store import read_current
from app.watcher import ModelWatcher, release_freed_memory
from tests.conftest import publish_nan_version, publish_tiny_version


def started_watcher(store: Path) -> ModelWatcher:
    registry = ModelRegistry(store, device="cpu")
    asyncio.run(registry.load_current())
    watcher = ModelWatcher(registry, ServiceMetrics(), interval_s=0)  # polled by hand below
    watcher.start()
    return watcher


def refusals(watcher: ModelWatcher) -> float:
    return watcher.metrics.registry.get_sample_value("reward_reloads_total", {"outcome": "refused"})


def test_a_replaced_model_is_freed_once_it_is_no_longer_the_rollback_target(tmp_path: Path) -> None:
    publish_tiny_version(tmp_path, "v1", seed=1)
    watcher = started_watcher(tmp_path)
    first = weakref.ref(watcher.registry.current.model)
    for seed, name in enumerate(("v2", "v3"), start=2):
        publish_tiny_version(tmp_path, name, seed=seed, make_current=False)
        asyncio.run(watcher.reload(name))
    gc.collect()
    assert first() is None, "v1 is neither live nor the rollback target, yet its weights are still referenced"
    assert watcher.registry.previous.version == "v2"  # kept loaded: rollback is instant


def test_a_refused_version_keeps_the_live_one_and_is_not_retried_every_poll(tmp_path: Path) -> None:
    publish_tiny_version(tmp_path, "v1")
    watcher = started_watcher(tmp_path)
    publish_nan_version(tmp_path, "nan")

    async def poll_twice() -> None:
        assert await watcher.check_store() is None
        assert await watcher.check_store() is None

    asyncio.run(poll_twice())
    assert watcher.registry.current.version == "v1"
    assert refusals(watcher) == 1


def test_a_rollback_moves_current_back_and_the_next_poll_keeps_it(tmp_path: Path) -> None:
    publish_tiny_version(tmp_path, "v1", seed=1)
    watcher = started_watcher(tmp_path)
    publish_tiny_version(tmp_path, "v2", seed=2)

    async def swap_roll_back_and_poll() -> None:
        assert (await watcher.check_store()).version == "v2"
        assert (await watcher.rollback()).version == "v1"
        assert await watcher.check_store() is None

    asyncio.run(swap_roll_back_and_poll())
    assert watcher.registry.current.version == "v1"
    assert read_current(tmp_path) == "v1"  # a restart, or another replica's watcher, serves v1 too


def test_a_refused_reload_raises_with_the_reason_and_the_serving_version(tmp_path: Path) -> None:
    publish_tiny_version(tmp_path, "v1")
    watcher = started_watcher(tmp_path)
    publish_nan_version(tmp_path, "nan", make_current=False)
    with pytest.raises(CheckpointError, match="non-finite") as refused:
        asyncio.run(watcher.reload("nan"))
    assert refused.value.details == [{"version": "nan", "serving": "v1"}]
    assert read_current(tmp_path) == "v1"  # CURRENT moves only with a version that went live


def test_a_replica_that_started_without_a_model_takes_the_first_published_one(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, device="cpu")
    watcher = ModelWatcher(registry, ServiceMetrics(), interval_s=0)
    watcher.start()
    assert asyncio.run(watcher.check_store()) is None  # nothing published yet
    publish_tiny_version(tmp_path, "first")
    assert asyncio.run(watcher.check_store()).version == "first"
    assert registry.ready


class Node:
    """An object in a reference cycle: only the cyclic garbage collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_after_a_load_survivors_are_frozen_and_a_cycle_dropped_later_is_collected_at_the_next() -> None:
    node = Node()
    alive = weakref.ref(node)
    release_freed_memory()
    assert gc.get_freeze_count() > 0 and alive() is not None
    del node
    gc.collect()
    assert alive() is not None  # frozen: ordinary collections no longer scan it
    release_freed_memory()  # the next load unfreezes before it collects
    assert alive() is None


def test_reloads_freeze_what_stays_alive(tmp_path: Path) -> None:
    publish_tiny_version(tmp_path, "v1", seed=1)
    watcher = started_watcher(tmp_path)
    gc.unfreeze()
    publish_tiny_version(tmp_path, "v2", seed=2, make_current=False)
    asyncio.run(watcher.reload("v2"))
    assert gc.get_freeze_count() > 0
    asyncio.run(watcher.stop())
    watcher.registry.close()
