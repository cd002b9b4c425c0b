"""RewardClient and AsyncRewardClient against the real server: concurrency, chunking, retries, failover."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.client import (
    AsyncRewardClient,
    RetryPolicy,
    RewardClient,
    RewardRequestError,
    RewardUnavailableError,
)
from tests.conftest import free_port, sample_texts, start_server, wait_until_ready

PROMPTS = sample_texts(40, seed=21)
RESPONSES = sample_texts(40, seed=22)
QUICK = RetryPolicy(max_retries=2, backoff_base=0.05, backoff_max=0.2)
# retries at most 0.5 s apart across a server restart: about 90 s, as long as a test server gets to become
# ready (tests/conftest.py), so a slow start on a loaded machine is still within the call
RESTART_RETRIES = 180


def reference_rewards(url: str, prompts: list[str], responses: list[str]) -> list[float]:
    """The server's own answer, one plain /score_batch request."""
    items = [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]
    response = httpx.post(f"{url}/score_batch", json={"items": items}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["rewards"]


def metric_total(url: str, name: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text)
    return sum(s.value for f in families for s in f.samples if s.name == name)


@pytest.fixture(scope="module")
def expected(server_url: str) -> list[float]:
    return reference_rewards(server_url, PROMPTS, RESPONSES)


def test_a_batch_larger_than_the_chunk_size_comes_back_in_input_order(server_url, expected):
    with RewardClient(server_url, chunk_size=7, max_concurrency=3) as client:
        assert client.score_batch(PROMPTS, RESPONSES) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_sync_client_shared_by_threads_gives_each_caller_its_own_rewards(server_url, expected):
    def slice_of(start: int) -> list:
        return client.score_batch(PROMPTS[start : start + 10], RESPONSES[start : start + 10])

    client = RewardClient(server_url, chunk_size=4, max_concurrency=4)
    with client, ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(slice_of, range(0, 40, 10)))
    assert sum(results, []) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_async_client_under_concurrent_calls_keeps_every_pair_with_its_reward(server_url, expected):
    async def run() -> list:
        async with AsyncRewardClient(server_url, chunk_size=3, max_concurrency=4) as client:
            singles = [client.score(p, r) for p, r in zip(PROMPTS[:20], RESPONSES[:20], strict=True)]
            return [*await asyncio.gather(*singles), *await client.score_batch(PROMPTS[20:], RESPONSES[20:])]

    assert asyncio.run(run()) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_a_validation_error_from_the_server_is_raised_not_retried(server_url):
    with RewardClient(server_url, alpha=2.0) as client, pytest.raises(RewardRequestError) as raised:
        client.score("a prompt", "a response")
    assert raised.value.status_code == 422 and raised.value.error_type == "validation_error"
    assert any("alpha" in str(detail.get("loc")) for detail in raised.value.details)


def test_failover_skips_a_dead_first_url(server_url, expected):
    dead = f"http://127.0.0.1:{free_port()}"
    with RewardClient([dead, server_url], retry=QUICK, chunk_size=10) as client:
        assert client.score_batch(PROMPTS, RESPONSES) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_with_every_url_dead_the_client_raises_or_gives_none_never_a_number():
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    with RewardClient(dead, retry=QUICK) as client, pytest.raises(RewardUnavailableError):
        client.score("a prompt", "a response")
    with RewardClient(dead, retry=QUICK, on_error="none") as client:
        assert client.score_batch(["a", "b"], ["x", "y"]) == [None, None]


# a tiny queue and a long batch wait: a burst of requests overflows the queue and gets 429
SHEDDING_ENV = {"REWARD_QUEUE_SIZE": "4", "REWARD_MAX_WAIT_MS": "200", "REWARD_MAX_BATCH_SIZE": "64"}


def test_requests_shed_with_429_are_retried_until_served(
    tiny_model_store: Path, server_factory: Callable, expected
):
    retry = RetryPolicy(max_retries=30, backoff_base=0.1, backoff_max=1.5)

    async def burst(url: str) -> list:
        async with AsyncRewardClient(url, retry=retry, max_concurrency=32) as client:
            calls = [client.score_batch(PROMPTS[i : i + 2], RESPONSES[i : i + 2]) for i in range(0, 40, 2)]
            return sum(await asyncio.gather(*(calls + calls)), [])

    with server_factory(tiny_model_store, env=SHEDDING_ENV) as server:
        rewards = asyncio.run(burst(server.url))
        assert metric_total(server.url, "reward_shed_total") > 0, "the burst should have overflowed the queue"
    assert rewards == pytest.approx(expected + expected, rel=1e-5, abs=1e-6)


def test_retries_carry_a_call_across_a_server_restart(
    tiny_model_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def server_on_port():  # the same port every time, so conftest's url (another free port) is not used
        return start_server(tiny_model_store, tmp_path, args=("--port", str(port)), wait_ready=False)

    retry = RetryPolicy(max_retries=RESTART_RETRIES, backoff_base=0.1, backoff_max=0.5)
    outcome: dict = {}
    with RewardClient(url, retry=retry) as client:
        with server_on_port() as server:
            wait_until_ready(replace(server, url=url), timeout_s=90)
            before = client.score_batch(PROMPTS[:5], RESPONSES[:5])
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")
        # the server is down: this call fails and keeps retrying while the server comes back
        during = threading.Thread(
            target=lambda: outcome.update(rewards=client.score_batch(PROMPTS[:5], RESPONSES[:5]))
        )
        with caplog.at_level(logging.DEBUG, logger="app.client"):
            during.start()
            with server_on_port():
                during.join(timeout=RESTART_RETRIES * retry.backoff_max + 30)
    assert not during.is_alive()
    failed_attempts = [r for r in caplog.records if "reward request attempt" in r.getMessage()]
    assert failed_attempts, "the call succeeded without a retry: the server was never down for it"
    assert outcome["rewards"] == pytest.approx(before, rel=1e-5, abs=1e-6)
