"""SIGTERM on a real server process: it stops accepting connections, finishes the requests in flight
within the grace period, snapshots running statistics and exits 0."""

from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import RunningServer, start_server

PAIR = {"prompt": "How do I boil an egg?", "response": "Put it in boiling water for eight minutes."}


def wait_until_in_flight(server: RunningServer, count: int, timeout_s: float = 30.0) -> None:
    """Block until `count` requests besides the /metrics scrape itself are being handled."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{server.url}/metrics").text
        handled = re.search(r"^reward_inflight_requests (\S+)$", metrics, re.MULTILINE)
        if handled and float(handled.group(1)) >= count + 1:
            return
        time.sleep(0.02)
    raise TimeoutError(f"{count} requests never in flight")


def body_held_until(request: dict, release: threading.Event) -> Iterator[bytes]:
    """A request body sent in two parts, the second once `release` is set: in flight until then."""
    data = json.dumps(request).encode()
    yield data[:10]
    release.wait(timeout=30)
    yield data[10:]


def connection_refused(url: str) -> bool:
    """Whether a new connection is refused. A connection the stopping server accepted just before it
    closed its socket is closed unanswered (or reset), and a slow answer times out: neither is a refusal
    yet, so the caller asks again."""
    try:
        httpx.get(f"{url}/healthz", timeout=1.0)
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        return False
    return False


def test_sigterm_finishes_in_flight_requests_snapshots_stats_and_exits_0(
    tiny_model_store: Path, tmp_path: Path
) -> None:
    stats_path = tmp_path / "stats.json"
    env = {
        "REWARD_STATS_PATH": str(stats_path),
        "REWARD_STATS_SNAPSHOT_S": "3600",  # only the shutdown snapshot can write the file
        "REWARD_SHUTDOWN_GRACE_S": "20",
    }
    with start_server(tiny_model_store, tmp_path, env=env) as server:
        request = {**PAIR, "normalize": "running", "namespace": "run-42"}
        release = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            body = body_held_until(request, release)
            headers = {"content-type": "application/json"}
            in_flight = pool.submit(
                httpx.post, f"{server.url}/score", content=body, headers=headers, timeout=30
            )
            wait_until_in_flight(server, 1)
            server.process.send_signal(signal.SIGTERM)
            refused_while_in_flight, deadline = False, time.monotonic() + 20
            while not refused_while_in_flight and time.monotonic() < deadline:
                refused_while_in_flight = connection_refused(server.url)
            release.set()
            answer = in_flight.result()
        assert answer.status_code == 200, answer.text
        assert refused_while_in_flight, "the server kept accepting connections after SIGTERM"
        assert server.process.wait(timeout=30) == 0, server.log()
    snapshot = json.loads(stats_path.read_text())
    assert snapshot["namespaces"]["run-42"]["count"] == 1


def test_sigterm_with_nothing_in_flight_exits_0_at_once(tiny_model_store: Path, tmp_path: Path) -> None:
    with start_server(tiny_model_store, tmp_path) as server:
        assert httpx.post(f"{server.url}/score", json=PAIR).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0, server.log()
