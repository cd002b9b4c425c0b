"""Every Prometheus object of the service: one `reward_` prefix, bounded labels, buckets chosen on purpose.

`ServiceMetrics` owns its own CollectorRegistry and is built once by create_app, so two apps in one
process (tests) never share counters. Labels are only the route template, the status code and a few
fixed words: never a namespace, a version name outside reward_model_info, or any request text.

The service runs one process per replica (no prometheus-client multiprocess mode): the micro-batcher
only batches well when every request of a replica meets in one queue, and running statistics live in
that process; scale out with replicas instead (docs/operations.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
)

RELOAD_OUTCOMES = ("success", "refused", "rollback")
REWARD_KINDS = ("hybrid", "model", "heuristic")


def geometric_buckets(start: float, stop: float, factor: float = 2.0) -> tuple[float, ...]:
    """start, start*factor, ... up to the first bound >= stop: even resolution on a log scale."""
    bounds = [start]
    while bounds[-1] < stop:
        bounds.append(bounds[-1] * factor)
    return tuple(round(b, 6) for b in bounds)


def linear_buckets(start: float, stop: float, step: float) -> tuple[float, ...]:
    count = round((stop - start) / step)
    return tuple(round(start + i * step, 6) for i in range(count + 1))


# request, queue and forward durations: 0.5 ms (a cached tiny batch) to ~33 s (past any sane timeout)
DURATION_BUCKETS = geometric_buckets(0.0005, 30.0)
# loading a version: 10 ms (tiny test models) to ~5 min (a large encoder from a slow disk)
LOAD_BUCKETS = geometric_buckets(0.01, 300.0)
# items per batch up to the largest allowed max_batch_size (4096)
BATCH_SIZE_BUCKETS = geometric_buckets(1, 4096)
# padded tokens per batch: one short pair (8) to four times the default token budget
BATCH_TOKEN_BUCKETS = geometric_buckets(8, 65536)
# share of a batch's padded tokens that is padding; fine near 0, where a well-sorted batch sits
PADDING_RATIO_BUCKETS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# model rewards are standardized by the checkpoint's calibration and heuristics start at 1.0 minus
# penalties, so [-5, 5] in steps of 0.5 holds ordinary traffic and shows a drift of half a std
REWARD_BUCKETS = linear_buckets(-5.0, 5.0, 0.5)

# the histograms of ServiceMetrics: attribute -> (metric name, help, label names, buckets)
HISTOGRAMS: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...]]] = {
    "request_duration": (
        "reward_request_duration_seconds", "Time from request received to response sent, by route.",
        ("endpoint",), DURATION_BUCKETS,
    ),
    "queue_wait": (
        "reward_queue_wait_seconds", "Time an item waited in the queue before its batch started.",
        (), DURATION_BUCKETS,
    ),
    "forward_duration": (
        "reward_forward_duration_seconds", "Time of one micro-batch's forward pass (of encoded items).",
        (), DURATION_BUCKETS,
    ),
    "batch_size": ("reward_batch_size", "Items per micro-batch.", (), BATCH_SIZE_BUCKETS),
    "batch_tokens": (
        "reward_batch_tokens", "Padded tokens per micro-batch (items x longest estimated length).",
        (), BATCH_TOKEN_BUCKETS,
    ),
    "padding_ratio": (
        "reward_batch_padding_ratio", "Share of a micro-batch's padded tokens that is padding.",
        (), PADDING_RATIO_BUCKETS,
    ),
    "reward_value": (
        "reward_value", "Rewards handed out, by part: hybrid, model (calibrated) and heuristic.",
        ("kind",), REWARD_BUCKETS,
    ),
    "model_load": (
        "reward_model_load_seconds", "Time to verify, load and warm up a model version.", (), LOAD_BUCKETS,
    ),
}  # fmt: skip


class BatchStats(Protocol):
    """What the micro-batcher reports about one batch (its BatchReport has these fields)."""

    size: int
    padded_tokens: int
    real_tokens: int
    queue_waits: list[float]
    run_seconds: float


class ServiceMetrics:
    # built from HISTOGRAMS
    request_duration: Histogram
    queue_wait: Histogram
    forward_duration: Histogram
    batch_size: Histogram
    batch_tokens: Histogram
    padding_ratio: Histogram
    reward_value: Histogram
    model_load: Histogram

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu, open fds
        for attribute, (name, documentation, labels, buckets) in HISTOGRAMS.items():
            histogram = Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)
            setattr(self, attribute, histogram)
        self._define_http()
        self._define_batching()
        self._define_model()
        self._define_state()

    def _define_http(self) -> None:
        r = self.registry
        self.requests = Counter(
            "reward_requests_total", "HTTP requests by route template and status code.",
            ["endpoint", "status"], registry=r,
        )  # fmt: skip
        self.inflight = Gauge("reward_inflight_requests", "HTTP requests being handled now.", registry=r)
        self.shed = Counter(
            "reward_shed_total", "Requests refused with 429 (queue full or wait too long).", registry=r
        )

    def _define_batching(self) -> None:
        r = self.registry
        self.queue_depth = Gauge("reward_queue_depth", "Items waiting in the micro-batch queue.", registry=r)
        self.compute_workers = Gauge(
            "reward_compute_workers",
            "Workers running forward passes side by side: reward_forward_duration_seconds_sum grows by up "
            "to this many seconds per second.",
            registry=r,
        )
        for kind in REWARD_KINDS:
            self.reward_value.labels(kind)

    def _define_model(self) -> None:
        r = self.registry
        self.model_info = Info("reward_model", "The model version serving requests.", registry=r)
        self.execution_path = Gauge(
            "reward_execution_path_info", "1 for the execution path running the live version's forward.",
            ["path"], registry=r,
        )  # fmt: skip
        self.execution_items = Gauge(
            "reward_execution_candidate_items_per_second",
            "Canary items/s of each execution path timed at the live version's load (absent: not timed).",
            ["path"], registry=r,
        )  # fmt: skip
        self.reloads = Counter(
            "reward_reloads_total", "Model reloads by outcome: success, refused, rollback.",
            ["outcome"], registry=r,
        )  # fmt: skip
        for outcome in RELOAD_OUTCOMES:
            self.reloads.labels(outcome)
        self.store_checks = Counter(
            "reward_store_checks", "Polls of the model store's CURRENT by the reload watcher.", registry=r
        )
        self.last_reload = Gauge(
            "reward_last_reload_timestamp_seconds", "Unix time of the last successful reload or rollback.",
            registry=r,
        )  # fmt: skip

    def _define_state(self) -> None:
        r = self.registry
        self.snapshot_failures = Counter(
            "reward_stats_snapshot_failures", "Running-statistics snapshots that could not be written.",
            registry=r,
        )  # fmt: skip
        self.snapshot_success = Gauge(
            "reward_stats_snapshot_last_success_timestamp_seconds",
            "Unix time of the last running-statistics snapshot written (0: none yet).", registry=r,
        )  # fmt: skip
        self.load_errors = Counter(
            "reward_model_load_errors",
            "Model loads that failed with an unexpected error (not a refused checkpoint).", registry=r,
        )  # fmt: skip
        # the same facts as plain values, for /readyz
        self.last_snapshot_at: float | None = None
        self.snapshot_failure_count = 0
        self.last_snapshot_error: str | None = None  # why the latest snapshot failed; None once one succeeds

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.request_duration.labels(endpoint).observe(seconds)
        if status == 429:
            self.shed.inc()

    def observe_batch(self, batch: BatchStats) -> None:
        """The batcher's `on_batch` observer."""
        self.batch_size.observe(batch.size)
        self.batch_tokens.observe(batch.padded_tokens)
        waste = 1.0 - batch.real_tokens / batch.padded_tokens if batch.padded_tokens else 0.0
        self.padding_ratio.observe(waste)
        self.forward_duration.observe(batch.run_seconds)
        for wait in batch.queue_waits:
            self.queue_wait.observe(wait)

    def observe_rewards(self, kind: str, values: Sequence[float]) -> None:
        histogram = self.reward_value.labels(kind)
        for value in values:
            histogram.observe(value)

    def track_queue_depth(self, depth: Callable[[], float]) -> None:
        """Read the depth at scrape time, so the gauge is never stale."""
        self.queue_depth.set_function(depth)

    def model_loaded(self, version: str, load_seconds: float | None, execution: dict) -> None:
        """A version went live (at start-up, by reload or by rollback); `execution` as in /v1/model."""
        self.model_info.info({"version": version})
        self.execution_path.clear()
        self.execution_path.labels(execution["path"]).set(1)
        self.execution_items.clear()
        for candidate in execution["candidates"]:
            if candidate["items_per_s"] is not None:
                self.execution_items.labels(candidate["path"]).set(candidate["items_per_s"])
        if load_seconds is not None:
            self.model_load.observe(load_seconds)

    def store_checked(self) -> None:
        self.store_checks.inc()

    def reload_finished(self, outcome: str) -> None:
        if outcome not in RELOAD_OUTCOMES:
            raise ValueError(f"reload outcome must be one of {RELOAD_OUTCOMES}, got {outcome!r}")
        self.reloads.labels(outcome).inc()
        if outcome != "refused":
            self.last_reload.set(time.time())

    def snapshot_written(self) -> None:
        self.last_snapshot_at = time.time()
        self.snapshot_success.set(self.last_snapshot_at)
        self.last_snapshot_error = None

    def snapshot_failed(self, reason: str) -> None:
        self.snapshot_failures.inc()
        self.snapshot_failure_count += 1
        self.last_snapshot_error = reason

    def snapshot_state(self) -> dict:
        """The snapshot's health for /readyz: when the last one was written, and why the latest failed."""
        return {"last_success": self.last_snapshot_at, "failures": self.snapshot_failure_count,
                "last_error": self.last_snapshot_error}  # fmt: skip

    def exposition(self) -> tuple[bytes, str]:
        """The text format body and its content type, for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
