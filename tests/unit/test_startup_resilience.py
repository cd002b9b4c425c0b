"""Background work that must survive a hostile environment: a load failing in an unexpected way still
starts the watcher, and running out of file descriptors neither stops the watcher nor the snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Settings
from app.main import load_model, save_snapshot
from app.metrics import ServiceMetrics
from app.normalize import RunningStats
from app.registry import ModelRegistry
from app.watcher import ModelWatcher
from tests.conftest import publish_tiny_version


@contextlib.contextmanager
def no_free_file_descriptors() -> Iterator[None]:
    """Hold every file descriptor the (lowered) soft limit allows, so the next open() fails with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 64, hard))
    held = []
    try:
        with contextlib.suppress(OSError):
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_unexpected_load_error_is_explained_and_a_later_publish_is_picked_up(tmp_path: Path) -> None:
    publish_tiny_version(tmp_path, "v1")
    registry = ModelRegistry(tmp_path, device="cpu")
    metrics = ServiceMetrics()
    watcher = ModelWatcher(registry, metrics, interval_s=0.05)

    def load_current_failing():
        raise RuntimeError("something no check foresaw")

    async def run() -> None:
        original, registry.load_current = registry.load_current, load_current_failing
        await load_model(registry, watcher)
        registry.load_current = original
        assert registry.current is None and "RuntimeError" in registry.last_error
        await asyncio.to_thread(publish_tiny_version, tmp_path, "v2", 2)
        for _ in range(400):
            if registry.current is not None:
                break
            await asyncio.sleep(0.05)
        await watcher.stop()

    asyncio.run(run())
    assert registry.current is not None and registry.current.version == "v2"
    assert metrics.registry.get_sample_value("reward_model_load_errors_total") == 1
    registry.close()


def watcher_with_a_new_version(store: Path) -> tuple[ModelRegistry, ModelWatcher]:
    """A registry serving v1 and its started watcher; v2 is published after the watcher's first look."""
    publish_tiny_version(store, "v1")
    registry = ModelRegistry(store, device="cpu")
    registry.activate(registry.load())
    watcher = ModelWatcher(registry, ServiceMetrics(), interval_s=0)
    watcher.start()
    publish_tiny_version(store, "v2", seed=2)
    return registry, watcher


def test_the_watcher_survives_running_out_of_file_descriptors(tmp_path: Path) -> None:
    registry, watcher = watcher_with_a_new_version(tmp_path)

    async def poll() -> None:
        with no_free_file_descriptors():
            assert await watcher.check_store() is None
        assert (await watcher.check_store()).version == "v2"

    asyncio.run(poll())
    registry.close()


def test_a_failed_snapshot_is_counted_and_shown_until_one_succeeds(tmp_path: Path) -> None:
    settings = Settings(stats_path=tmp_path / "stats.json")
    stats, metrics = RunningStats(0.9, 1e-6, 8), ServiceMetrics()
    stats.normalize("run", [1.0, 2.0])

    async def snapshot_twice() -> None:
        with no_free_file_descriptors():
            await save_snapshot(stats, settings, metrics)
        state = metrics.snapshot_state()
        assert state["failures"] == 1 and "OSError" in state["last_error"] and state["last_success"] is None
        await save_snapshot(stats, settings, metrics)

    asyncio.run(snapshot_twice())
    assert metrics.registry.get_sample_value("reward_stats_snapshot_failures_total") == 1
    assert metrics.snapshot_state()["last_error"] is None and metrics.snapshot_state()["last_success"] > 0
    assert RunningStats(0.9, 1e-6, 8).restore(tmp_path / "stats.json")


@pytest.mark.parametrize(
    "snapshot",
    [
        '{"format": 1, "namespaces": []}',
        '{"format": 1, "namespaces": {"a": {"mean": 0, "variance": 1, "count": 1e400}}}',
        "NaN",
    ],
)
def test_a_malformed_snapshot_never_stops_the_start(tmp_path: Path, snapshot: str) -> None:
    from app.main import running_stats_of

    (tmp_path / "stats.json").write_text(snapshot)
    assert len(running_stats_of(Settings(stats_path=tmp_path / "stats.json"))) == 0


def test_a_version_refused_for_lack_of_file_descriptors_is_retried_at_the_next_poll(tmp_path: Path) -> None:
    registry, watcher = watcher_with_a_new_version(tmp_path)
    release = threading.Event()

    def exhaust_descriptors_before_the_load(held: contextlib.ExitStack) -> None:
        release.wait(30)
        held.enter_context(no_free_file_descriptors())  # the load queued behind this finds none

    async def poll_during_exhaustion_then_again() -> None:
        with contextlib.ExitStack() as held:
            blocker = asyncio.ensure_future(registry.compute.run(exhaust_descriptors_before_the_load, held))
            await asyncio.sleep(0)  # the blocker holds the compute thread
            poll = asyncio.ensure_future(watcher.check_store())
            await asyncio.sleep(0.2)  # the poll has read CURRENT and queued its load behind the blocker
            release.set()
            await blocker
            assert await poll is None  # refused: no descriptor to open the version's files
        assert registry.current.version == "v1"
        assert (await watcher.check_store()).version == "v2"

    asyncio.run(poll_during_exhaustion_then_again())
    registry.close()


def test_the_startup_load_freezes_what_stays_alive(tmp_path: Path) -> None:
    publish_tiny_version(tmp_path, "v1")
    registry = ModelRegistry(tmp_path, device="cpu")
    watcher = ModelWatcher(registry, ServiceMetrics(), interval_s=3600)

    async def run() -> None:
        await load_model(registry, watcher)
        await watcher.stop()

    gc.unfreeze()
    asyncio.run(run())
    assert registry.current is not None and gc.get_freeze_count() > 0
    registry.close()
