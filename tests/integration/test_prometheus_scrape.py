"""A real Prometheus server (Debian's `prometheus` package) scrapes the live service every second on
loopback; its HTTP query API then returns the latency histogram and the version that serves."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    RunningServer,
    free_port,
    publish_tiny_version,
    require_tool,
    start_server,
    stop_process,
)

WAIT_S = 30.0  # for Prometheus to start, and for a scrape to show a change
PAIR = {"prompt": "how do i boil an egg", "response": "put it in boiling water for eight minutes"}


@contextlib.contextmanager
def prometheus_scraping(target: str, workdir: Path) -> Iterator[str]:
    """Run Prometheus on a free loopback port, scraping `target` (host:port) every second; yield its URL."""
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: reward\n    static_configs:\n      - targets: ['{target}']\n"
    )
    prometheus, port = require_tool("prometheus", "prometheus"), free_port()
    log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)
        log.close()


def query(prometheus: str, promql: str) -> list[dict]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5.0)
    response.raise_for_status()
    return response.json()["data"]["result"]


def wait_for_query(prometheus: str, promql: str, accept: Callable[[list[dict]], bool]) -> list[dict]:
    """Repeat an instant query until `accept(result)`; the last result names what went wrong."""
    deadline, result = time.monotonic() + WAIT_S, []
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):  # Prometheus still starting
            result = query(prometheus, promql)
            if accept(result):
                return result
        time.sleep(0.25)
    raise AssertionError(f"{promql} not as expected within {WAIT_S} s; last result: {result}")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    store = tmp_path / "model_store"
    publish_tiny_version(store, "v1", seed=1)
    return store


@pytest.fixture
def server(store: Path, tmp_path: Path) -> Iterator[RunningServer]:
    with start_server(store, tmp_path, env={"REWARD_RELOAD_INTERVAL": "0.2"}) as server:
        yield server


def test_prometheus_reads_the_latency_histogram_and_the_serving_version(
    server: RunningServer, store: Path, tmp_path: Path
) -> None:
    for _ in range(5):
        assert httpx.post(f"{server.url}/score", json=PAIR).status_code == 200
    target = server.url.removeprefix("http://")
    with prometheus_scraping(target, tmp_path) as prometheus:
        count = wait_for_query(
            prometheus, 'reward_request_duration_seconds_count{endpoint="/score"}',
            lambda result: result and float(result[0]["value"][1]) >= 5,
        )  # fmt: skip
        assert count[0]["metric"]["job"] == "reward"
        buckets = query(prometheus, 'reward_request_duration_seconds_bucket{endpoint="/score",le="+Inf"}')
        assert float(buckets[0]["value"][1]) == float(count[0]["value"][1])
        info = wait_for_query(prometheus, "reward_model_info", bool)
        assert [series["metric"]["version"] for series in info] == ["v1"]

        publish_tiny_version(store, "v2", seed=2)  # the watcher brings it live
        served = wait_for_served_version(server, "v2")
        info = wait_for_query(
            prometheus, "reward_model_info",
            lambda result: [series["metric"]["version"] for series in result] == [served],
        )  # fmt: skip
        reloads = query(prometheus, 'reward_reloads_total{outcome="success"}')
        assert float(reloads[0]["value"][1]) == 1


def wait_for_served_version(server: RunningServer, version: str) -> str:
    deadline = time.monotonic() + WAIT_S
    while (served := httpx.get(f"{server.url}/readyz").json()["model_version"]) != version:
        assert time.monotonic() < deadline, f"the watcher did not bring {version} live"
        time.sleep(0.1)
    return served
