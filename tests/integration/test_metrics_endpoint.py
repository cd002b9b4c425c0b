"""GET /metrics on the real server: counts and histograms follow the traffic, labels stay bounded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_VERSION, RunningServer, sample, scrape_metrics, start_server

# a queue of two items: a three-item batch is shed at once, deterministically
ENV = {"REWARD_QUEUE_SIZE": "2", "REWARD_MAX_BODY_BYTES": "2048"}
SECRET_NAMESPACE = "run-7f3a-secret"
PAIR = {"prompt": "how do i boil an egg", "response": "put it in boiling water for eight minutes"}


@pytest.fixture(scope="module")
def server(tiny_model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with start_server(tiny_model_store, tmp_path_factory.mktemp("server"), env=ENV) as server:
        for _ in range(3):
            assert (
                httpx.post(f"{server.url}/score", json={**PAIR, "namespace": SECRET_NAMESPACE}).status_code
                == 200
            )
        for size, status in ((2, 200), (2, 200), (3, 429)):
            response = httpx.post(f"{server.url}/score_batch", json={"items": [PAIR] * size})
            assert response.status_code == status
        assert httpx.get(f"{server.url}/v1/stats/{SECRET_NAMESPACE}").status_code == 404
        assert httpx.post(f"{server.url}/score", content=b"x" * 3000).status_code == 413
        assert httpx.get(f"{server.url}/no/such/path").status_code == 404
        yield server


def test_requests_are_counted_by_route_and_status(server: RunningServer) -> None:
    samples = scrape_metrics(server.url)
    assert sample(samples, "reward_requests_total", endpoint="/score", status="200") == 3
    assert sample(samples, "reward_requests_total", endpoint="/score_batch", status="200") == 2
    assert sample(samples, "reward_requests_total", endpoint="/score_batch", status="429") == 1
    assert (
        sample(samples, "reward_requests_total", endpoint="/score", status="413") == 1
    )  # refused before routing
    assert sample(samples, "reward_requests_total", endpoint="/v1/stats/{namespace}", status="404") == 1
    assert sample(samples, "reward_requests_total", endpoint="unmatched", status="404") == 1
    assert sample(samples, "reward_request_duration_seconds_count", endpoint="/score") == 4
    assert sample(samples, "reward_shed_total") == 1


def test_batches_and_rewards_count_every_scored_item(server: RunningServer) -> None:
    samples = scrape_metrics(server.url)
    scored_items = 3 + 2 + 2
    assert sample(samples, "reward_batch_size_sum") == scored_items
    assert sample(samples, "reward_queue_wait_seconds_count") == scored_items
    for kind in ("hybrid", "model", "heuristic"):
        assert sample(samples, "reward_value_count", kind=kind) == scored_items
    assert sample(samples, "reward_batch_tokens_sum") >= scored_items * 3  # CLS and two SEPs at least
    assert sample(samples, "reward_queue_depth") == 0
    assert sample(samples, "reward_inflight_requests") == 1  # the scrape itself


def test_the_serving_version_and_its_load_are_exported(server: RunningServer) -> None:
    samples = scrape_metrics(server.url)
    assert sample(samples, "reward_model_info", version=TINY_VERSION) == 1
    assert sample(samples, "reward_model_load_seconds_count") == 1
    assert sample(samples, "reward_reloads_total", outcome="success") == 0
    assert sample(samples, "process_resident_memory_bytes") > 0


def test_no_request_text_or_namespace_reaches_a_label(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=")
    for secret in (SECRET_NAMESPACE, "boil", "/no/such/path"):
        assert secret not in response.text
