"""Model lifecycle without restarts: watch the store's CURRENT, reload on demand, roll back.

A new version is verified, loaded and warmed up beside the live one on the service's compute pool,
alone (the registry's `load`; scoring pauses between two batches meanwhile), then made live with one
reference swap on the event loop. Requests pin the version they read at entry and the batcher never
mixes versions in a batch, so the swap falls between micro-batches and no request sees two versions.
Any failure refuses the version: the live one keeps serving, and the refusal is logged in one line,
counted in reward_reloads_total{outcome="refused"} and raised to the caller (the admin response).

The watcher reacts to *changes* of CURRENT, not to CURRENT differing from the live version, so a
refused version is not retried every interval and an admin rollback is not undone by the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import logging
from dataclasses import dataclass

from app.errors import CheckpointError, NotFound
from app.metrics import ServiceMetrics
from app.registry import ModelRegistry
from app.store import LoadedVersion, read_current, set_current, version_dir

log = logging.getLogger(__name__)


def release_freed_memory() -> None:
    """After a model load: collect what fell out of the registry, hand its pages back to the OS, and
    freeze what stays alive. Without the trim, glibc keeps freed heap memory and RSS creeps up across
    reloads (docs/operations.md has the measurements).

    Freezing (gc.freeze) moves every object alive now, the imported modules and the versions loaded
    (about 330k objects), out of sight of the cyclic garbage collector: its full collections scanned them
    all, up to 240 ms each with the GIL held, which stalled the event loop and the forward pass twice in
    10 s at 64 clients. Objects made later are collected as usual; each call unfreezes first, so the
    cycles of a version unloaded since the last call are still collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC}


def caused_by_resource_exhaustion(exc: BaseException) -> bool:
    """Whether an OSError of exhausted resources is in the exception's chain: not the version's fault."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in RESOURCE_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass(frozen=True)
class ReloadResult:
    outcome: str  # success, rollback or unchanged
    version: str  # the version live now
    previous: str | None  # the version it replaced
    load_seconds: float | None = None  # verify + load + warm-up time of the new version


class ModelWatcher:
    def __init__(self, registry: ModelRegistry, metrics: ServiceMetrics, interval_s: float):
        self.registry = registry
        self.metrics = metrics
        self.interval_s = interval_s  # 0 turns polling off; admin reloads still work
        self._lock = asyncio.Lock()  # one load at a time, whoever asks
        self._seen_current: str | None = None
        self._task: asyncio.Task | None = None

    def _report_live(self, version: LoadedVersion, load_seconds: float | None) -> None:
        self.metrics.model_loaded(version.version, load_seconds, self.registry.execution_report(version))

    def start(self) -> None:
        """Remember CURRENT as it is now, report the live version, and poll if an interval is set."""
        self._seen_current = self._read_current()
        if self.registry.current is not None:
            self._report_live(self.registry.current, self.registry.last_load_seconds)
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="model-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reload(self, version: str | None = None) -> ReloadResult:
        """Load `version` (default: the store's CURRENT) and make it live; CheckpointError if refused."""
        async with self._lock:
            name = version or self._read_current()
            if name is None:
                raise NotFound(f"{self.registry.store} has no CURRENT version; publish one or name a version")
            if not version_dir(self.registry.store, name).is_dir():
                raise NotFound(f"no version {name!r} in {self.registry.store}")
            live = self.registry.current
            if live is not None and live.version == name:
                return ReloadResult("unchanged", name, None)
            result = await self._load_and_swap(name)
            if version is not None:
                self._point_current_at(name)
            self._seen_current = self._read_current()
            return result

    async def rollback(self) -> ReloadResult:
        """Make the previous version live again (it is kept loaded, so this is instant)."""
        async with self._lock:
            previous = self.registry.previous
            if previous is None:
                raise NotFound("no previous version to roll back to")
            replaced = self.registry.activate(previous)
            self._report_live(previous, None)
            self.metrics.reload_finished("rollback")
            self._point_current_at(previous.version)
            self._seen_current = self._read_current()
            log.info("rolled back from %s to %s", replaced.version if replaced else None, previous.version)
            return ReloadResult("rollback", previous.version, replaced.version if replaced else None)

    async def check_store(self) -> ReloadResult | None:
        """One poll: reload when CURRENT changed since last seen; a refusal is logged, not raised. A
        refusal caused by the machine (out of file descriptors or memory) is retried at the next poll."""
        self.metrics.store_checked()
        current = self._read_current()
        if current is None or current == self._seen_current:
            return None
        self._seen_current = current
        try:
            return await self.reload()
        except CheckpointError as exc:
            if caused_by_resource_exhaustion(exc):
                self._seen_current = None
        return None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_store()
            except Exception:  # a broken store must not stop the watcher; the next poll tries again
                log.exception("model watcher: checking %s failed", self.registry.store)

    async def _load_and_swap(self, name: str) -> ReloadResult:
        live = self.registry.current
        try:
            loaded = await self.registry.load_off_loop(name)
        except Exception as exc:  # every failure of a candidate is a refusal, whatever raised it
            reason = " ".join(str(exc).split()) or type(exc).__name__  # torch errors span lines
            self.metrics.reload_finished("refused")
            log.warning("model version %s refused, %s keeps serving: %s", name, live and live.version, reason)
            details = [{"version": name, "serving": live and live.version}]
            raise CheckpointError(f"version {name} refused: {reason}", details) from exc
        replaced = self.registry.activate(loaded)
        self._report_live(loaded, self.registry.last_load_seconds)
        self.metrics.reload_finished("success")
        await asyncio.to_thread(release_freed_memory)  # the version before `replaced` is unreferenced now
        self.registry.release_device_memory()
        return ReloadResult(
            "success", loaded.version, replaced and replaced.version, self.registry.last_load_seconds
        )

    def _read_current(self) -> str | None:
        try:
            return read_current(self.registry.store)
        except (CheckpointError, OSError) as exc:
            log.warning("model watcher: unreadable CURRENT in %s: %s", self.registry.store, exc)
            return None

    def _point_current_at(self, name: str) -> None:
        """Make the store agree with what serves, so restarts and other replicas' watchers follow."""
        try:
            set_current(self.registry.store, name)
        except (CheckpointError, OSError) as exc:  # a read-only store: this replica alone changes
            log.warning("serving %s but could not point CURRENT at it: %s", name, exc)
