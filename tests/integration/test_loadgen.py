"""The load generator the benchmark and soak scripts share, against the real server on loopback."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
from pathlib import Path

import pytest

from app.loadgen import Connections, app_command, percentile, rss_mib, run_clients, serving, wait_ready

PAIR = {"prompt": "how do i boil an egg", "response": "put it in boiling water for eight minutes"}
ENV = {"REWARD_TORCH_THREADS": "1", "REWARD_DTYPE": "float32", "REWARD_STATS_PATH": ""}


def test_a_served_app_answers_keep_alive_requests_and_is_stopped_on_exit(
    tiny_model_store: Path, tmp_path: Path
) -> None:
    async def two_requests_on_one_connection(url: str) -> list[int]:
        connections = Connections(url)
        try:
            request = connections.post("/score", PAIR)
            statuses = [(await connections.send(request, timeout_s=60))[0] for _ in range(2)]
            assert len(connections.idle) == 1  # the second request reused the first one's connection
            return statuses
        finally:
            connections.close()

    with serving(app_command(tiny_model_store), ENV, tmp_path / "server.log") as (url, process):
        assert asyncio.run(two_requests_on_one_connection(url)) == [200, 200]
        assert rss_mib(process.pid) > 10
    assert process.poll() is not None
    assert math.isnan(rss_mib(process.pid))


def test_waiting_for_a_server_that_exits_says_so() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_ready("http://127.0.0.1:9", process, timeout_s=30)


def test_percentile_takes_the_nearest_rank_below_and_none_of_nothing() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert [percentile(values, q) for q in (0.0, 0.5, 0.99, 1.0)] == [1.0, 3.0, 5.0, 5.0]
    assert percentile([], 0.5) is None


def test_clients_run_on_uvloop_when_it_is_installed() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def loop_type() -> type:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop())

    assert run_clients(loop_type()) is uvloop.Loop
