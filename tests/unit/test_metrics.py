"""ServiceMetrics: the series the contract names, bounded labels, buckets that resolve what ops look at."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.metrics import (
    BATCH_SIZE_BUCKETS,
    DURATION_BUCKETS,
    REWARD_BUCKETS,
    ServiceMetrics,
)

# as Prometheus reads the text format: counters without _total, the info metric as a gauge
CONTRACT_FAMILIES = {
    "reward_requests": "counter", "reward_request_duration_seconds": "histogram",
    "reward_queue_wait_seconds": "histogram", "reward_forward_duration_seconds": "histogram",
    "reward_batch_size": "histogram", "reward_batch_tokens": "histogram",
    "reward_batch_padding_ratio": "histogram",
    "reward_queue_depth": "gauge", "reward_inflight_requests": "gauge", "reward_shed": "counter",
    "reward_value": "histogram", "reward_model_info": "gauge", "reward_model_load_seconds": "histogram",
    "reward_reloads": "counter", "reward_last_reload_timestamp_seconds": "gauge",
}  # fmt: skip


@dataclass
class Batch:
    size: int
    padded_tokens: int
    real_tokens: int
    queue_waits: list[float]
    run_seconds: float


def families(metrics: ServiceMetrics) -> dict:
    body, _ = metrics.exposition()
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def value(metrics: ServiceMetrics, name: str, **labels: str) -> float:
    for family in families(metrics).values():
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise KeyError(f"{name}{labels}")


def test_every_contract_series_is_exported_with_its_type() -> None:
    exported = {name: family.type for name, family in families(ServiceMetrics()).items()}
    assert {name: exported.get(name) for name in CONTRACT_FAMILIES} == CONTRACT_FAMILIES


def test_two_services_in_one_process_do_not_share_counts() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.observe_request("/score", 200, 0.01)
    assert value(first, "reward_requests_total", endpoint="/score", status="200") == 1
    with pytest.raises(KeyError):
        value(second, "reward_requests_total", endpoint="/score", status="200")


def test_a_429_counts_as_shed_and_as_a_request() -> None:
    metrics = ServiceMetrics()
    metrics.observe_request("/score_batch", 429, 0.001)
    metrics.observe_request("/score_batch", 200, 0.02)
    assert value(metrics, "reward_shed_total") == 1
    assert value(metrics, "reward_requests_total", endpoint="/score_batch", status="429") == 1


def test_batch_padding_ratio_is_the_share_of_padded_tokens() -> None:
    metrics = ServiceMetrics()
    metrics.observe_batch(
        Batch(size=4, padded_tokens=40, real_tokens=10, queue_waits=[0.001] * 4, run_seconds=0.05)
    )
    assert value(metrics, "reward_batch_padding_ratio_sum") == pytest.approx(0.75)
    assert value(metrics, "reward_batch_size_sum") == 4
    assert value(metrics, "reward_queue_wait_seconds_count") == 4  # one wait per item, not per batch
    assert value(metrics, "reward_forward_duration_seconds_count") == 1


def execution_report(path: str, rates: dict[str, float | None]) -> dict:
    """An /v1/model `execution` field with these candidates' canary items/s (None: refused)."""
    candidates = [{"path": name, "items_per_s": rate} for name, rate in rates.items()]
    return {"path": path, "setting": "auto", "candidates": candidates}


def test_model_info_names_only_the_live_version() -> None:
    metrics = ServiceMetrics()
    metrics.model_loaded("v1", 0.5, execution_report("float32", {"float32": None}))
    metrics.model_loaded("v2", 0.7, execution_report("float32", {"float32": None}))
    info = [s for s in families(metrics)["reward_model_info"].samples if s.name == "reward_model_info"]
    assert [s.labels for s in info] == [{"version": "v2"}]
    assert value(metrics, "reward_model_load_seconds_count") == 2


def test_execution_metrics_show_the_live_path_and_its_candidates_rates() -> None:
    metrics = ServiceMetrics()
    metrics.model_loaded("v1", 0.5, execution_report("bfloat16", {"float32": 50.0, "bfloat16": 140.0}))
    metrics.model_loaded(
        "v2", 0.5, execution_report("onnx", {"float32": 60.0, "onnx": 90.0, "onnx-int8": None})
    )
    paths = families(metrics)["reward_execution_path_info"].samples
    assert [(s.labels, s.value) for s in paths] == [({"path": "onnx"}, 1.0)]  # the old path is gone
    rates = families(metrics)["reward_execution_candidate_items_per_second"].samples
    assert {s.labels["path"]: s.value for s in rates} == {"float32": 60.0, "onnx": 90.0}  # refused: absent


def test_a_refused_reload_does_not_move_the_last_reload_time() -> None:
    metrics = ServiceMetrics()
    metrics.reload_finished("refused")
    assert value(metrics, "reward_last_reload_timestamp_seconds") == 0
    metrics.reload_finished("success")
    assert value(metrics, "reward_last_reload_timestamp_seconds") > 0
    assert value(metrics, "reward_reloads_total", outcome="refused") == 1
    with pytest.raises(ValueError, match="outcome"):
        metrics.reload_finished("maybe")


def test_queue_depth_is_read_at_scrape_time() -> None:
    metrics, pending = ServiceMetrics(), [1, 2, 3]
    metrics.track_queue_depth(lambda: len(pending))
    assert value(metrics, "reward_queue_depth") == 3
    pending.clear()
    assert value(metrics, "reward_queue_depth") == 0


def test_buckets_span_what_the_service_produces() -> None:
    assert DURATION_BUCKETS[0] <= 0.001 and DURATION_BUCKETS[-1] >= 30  # 0.5 ms .. past any timeout
    ratios = {b / a for a, b in pairwise(DURATION_BUCKETS)}
    assert max(ratios) == pytest.approx(min(ratios))  # geometric: the same relative resolution everywhere
    assert all(int(b) == b and int(b) & (int(b) - 1) == 0 for b in BATCH_SIZE_BUCKETS)  # powers of two
    assert BATCH_SIZE_BUCKETS[-1] >= 4096  # the largest max_batch_size the settings allow
    assert REWARD_BUCKETS[0] <= -3 and REWARD_BUCKETS[-1] >= 3 and 0.0 in REWARD_BUCKETS
