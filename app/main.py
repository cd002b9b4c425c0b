"""create_app(settings): the composition root. The lifespan builds every serving object, puts it on
app.state, loads the model in the background (/readyz says when it is ready) and cleans up at shutdown."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.admission import Admission
from app.api import admin, model_info, openai, openrlhf, operations, score, stats
from app.api.direct_routes import DirectRoutes
from app.api.error_handlers import install_error_handlers
from app.api.middleware import (
    BodySizeLimitMiddleware,
    CanonicalPathMiddleware,
    HardeningMiddleware,
    MetricsMiddleware,
    RequestIdMiddleware,
    UnexpectedErrorMiddleware,
)
from app.backends.devices import configure_torch_threads, resolve_device, set_thread_threads
from app.batcher import BatchPolicy, MicroBatcher
from app.compute import ComputePool
from app.config import Settings
from app.heuristics import HeuristicConfig
from app.metrics import ServiceMetrics
from app.normalize import RunningStats, write_snapshot
from app.registry import ModelRegistry
from app.service import BatchScorer, ModelHealth, ScoringDefaults, ScoringService
from app.store import remove_stale_temporaries
from app.watcher import ModelWatcher, release_freed_memory

log = logging.getLogger(__name__)


def running_stats_of(settings: Settings) -> RunningStats:
    stats = RunningStats(
        settings.running_momentum, settings.norm_eps, settings.max_namespaces, settings.namespace_idle_s
    )
    if settings.stats_path is not None:
        try:
            if stats.restore(settings.stats_path):
                log.info("restored running stats of %d namespaces from %s", len(stats), settings.stats_path)
        except Exception as exc:  # any startup file may be malformed; the service starts without it
            log.error("ignoring unreadable running-stats snapshot %s: %s", settings.stats_path, exc)
    return stats


STALE_TEMPORARY_S = 3600.0  # a `.tmp-*` version untouched this long belongs to a killed publish


async def load_model(registry: ModelRegistry, watcher: ModelWatcher) -> None:
    """Load CURRENT, freeze what is alive then (release_freed_memory), then watch the store (also when
    nothing loaded: a later publish is picked up)."""
    removed = await asyncio.to_thread(remove_stale_temporaries, registry.store, STALE_TEMPORARY_S)
    if removed:
        log.info("removed %d half-written versions left by killed publishes: %s", len(removed), removed)
    try:
        loaded = await registry.load_current()
        log.info("loaded model version %s in %.2f s", loaded.version, registry.last_load_seconds)
    except Exception as exc:  # whatever failed (CUDA out of memory too), a later publish is still picked up
        registry.remember_failure(exc)
        log.exception("no model to serve: %s", registry.last_error)
        watcher.metrics.load_errors.inc()
    await asyncio.to_thread(release_freed_memory)
    watcher.start()


async def snapshot_periodically(stats: RunningStats, settings: Settings, metrics: ServiceMetrics) -> None:
    while True:
        await asyncio.sleep(settings.stats_snapshot_s)
        await save_snapshot(stats, settings, metrics)


async def save_snapshot(stats: RunningStats, settings: Settings, metrics: ServiceMetrics) -> None:
    """Write the snapshot; a failure (disk full, out of file descriptors...) is logged and counted, and
    the next period tries again."""
    if settings.stats_path is None:
        return
    snapshot = stats.to_dict()  # taken on the event loop, where the stats change; written off it
    try:
        await asyncio.to_thread(write_snapshot, settings.stats_path, snapshot)
    except Exception as exc:
        log.error("cannot write running-stats snapshot %s: %s", settings.stats_path, exc)
        metrics.snapshot_failed(f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or 'see the log'}")
    else:
        metrics.snapshot_written()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    configure_torch_threads(settings.torch_threads)
    switch_interval = sys.getswitchinterval()  # the process's own, given back at shutdown
    sys.setswitchinterval(settings.gil_switch_ms / 1000)
    metrics: ServiceMetrics = app.state.metrics
    # forward passes side by side on its workers; model loads alone on its first worker
    workers = settings.compute_workers_for(resolve_device(settings.device).type)
    compute = ComputePool(
        workers, settings.torch_threads, set_thread_threads, measured=settings.compute_workers == 0
    )
    log.info(
        "compute pool: %d worker(s), %d torch thread(s) in all, %d each when side by side (%s)",
        workers, settings.torch_threads, compute.threads_per_worker, compute.setting,
    )  # fmt: skip
    registry = ModelRegistry(
        settings.model_store, settings.device, settings.dtype, settings.execution_path, settings.onnx_cache,
        settings.max_model_bytes, compute,
    )  # fmt: skip
    health = ModelHealth()
    batcher = MicroBatcher(
        BatchScorer(health),
        BatchPolicy.from_settings(settings, registry.device.type),
        metrics.observe_batch,
        compute,
    )
    metrics.track_queue_depth(lambda: batcher.queue_depth)
    metrics.compute_workers.set_function(lambda: compute.active_workers)
    stats, defaults = running_stats_of(settings), ScoringDefaults.from_settings(settings)
    admission = Admission(
        HeuristicConfig.from_settings(settings), settings.tokenize_threads, settings.retry_after_s
    )
    service = ScoringService(registry, batcher, admission, health, stats, defaults, metrics)
    watcher = ModelWatcher(registry, metrics, settings.reload_interval)
    app.state.registry, app.state.batcher, app.state.service = registry, batcher, service
    app.state.watcher = watcher
    batcher.start()
    background = [
        asyncio.create_task(load_model(registry, watcher), name="load-model"),
        asyncio.create_task(
            snapshot_periodically(service.running_stats, settings, metrics), name="stats-snapshot"
        ),
    ]
    try:
        yield
    finally:
        for task in background:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a crashed background task must not skip the cleanup below
                log.exception("background task %s failed", task.get_name())
        await watcher.stop()
        await batcher.stop()
        await asyncio.to_thread(admission.close)
        await asyncio.to_thread(compute.close)  # waits for a load still running on the compute pool
        await save_snapshot(service.running_stats, settings, metrics)
        sys.setswitchinterval(switch_interval)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="reward-service",
        summary="Micro-batched hybrid rewards for (prompt, response) pairs",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()  # built here, not in the lifespan: the middleware needs it
    install_error_handlers(app)
    routers = (
        score.router,
        operations.router,
        model_info.router,
        stats.router,
        admin.router,
        openrlhf.router,
        openai.router,
    )
    for router in routers:
        app.include_router(router)
    # innermost, so that every middleware applies; these routers are included above with no prefix
    direct = (*score.router.routes, *openrlhf.router.routes, *openai.router.routes)
    app.add_middleware(DirectRoutes, routes=direct)
    app.add_middleware(UnexpectedErrorMiddleware)  # an unexpected error ends as a 500 here
    app.add_middleware(CanonicalPathMiddleware)  # before routing sees the decoded path
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        route_max_bytes={"/get_reward": settings.get_reward_max_body_bytes},
    )
    app.add_middleware(HardeningMiddleware, body_timeout_s=settings.body_timeout_s)  # needs the request id
    app.add_middleware(RequestIdMiddleware)  # even a 413 carries the request id
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: times and counts all
    return app
