"""RewardClient / AsyncRewardClient policy against scripted HTTP answers (httpx.MockTransport).

The scripted server scores a pair as len(response) + len(prompt) / 100 so each reward names its pair.
Failures that a real server cannot produce on demand (a date Retry-After, a dead first URL that later
comes back, a wrong reward count) are scripted here; tests/integration/test_client_live.py uses the real one.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from app import client as client_module
from app.client import (
    AsyncRewardClient,
    RetryPolicy,
    RewardClient,
    RewardClientError,
    RewardRequestError,
    RewardUnavailableError,
    options_from_env,
    parse_retry_after,
)

FAST = RetryPolicy(max_retries=3, backoff_base=0.01, backoff_max=5.0)
Handler = Callable[[httpx.Request], httpx.Response]


def reward_of(prompt: str, response: str) -> float:
    return len(response) + len(prompt) / 100


def scoring(request: httpx.Request) -> httpx.Response:
    items = json.loads(request.content)["items"]
    rewards = [reward_of(item["prompt"], item["response"]) for item in items]
    return httpx.Response(200, json={"rewards": rewards, "model_version": "v1"})


def error(status: int, kind: str, headers: dict | None = None) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"type": kind, "message": kind, "details": []}}, headers=headers
    )


class Script:
    """A fake server: answers from `answers` in turn (then scores), recording every request and wait."""

    def __init__(self, *answers: httpx.Response | type[Exception]):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            return scoring(request)
        if isinstance(answer, type):
            raise answer("scripted failure", request=request)
        return answer


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", recorded.append)
    return recorded


def sync_client(handler: Handler, urls="http://rm-a", **kwargs) -> RewardClient:
    return RewardClient(
        urls, transport=httpx.MockTransport(handler), retry=kwargs.pop("retry", FAST), **kwargs
    )


PROMPTS = [f"prompt {i}" for i in range(10)]
RESPONSES = ["x" * i for i in range(1, 11)]
EXPECTED = [reward_of(p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    in_ten = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=10), usegmt=True)
    assert 8.0 <= parse_retry_after(in_ten) <= 10.0
    assert parse_retry_after(None) == 0.0
    assert parse_retry_after("soon") == 0.0


def test_backoff_never_waits_less_than_retry_after_nor_more_than_the_cap():
    policy = RetryPolicy(backoff_base=0.5, backoff_max=4.0)
    delays = [policy.delay(round_number, retry_after=2.0) for round_number in range(1, 8) for _ in range(20)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert policy.delay(10, retry_after=100.0) == 4.0


def test_overloaded_answer_is_retried_after_its_retry_after(waits):
    script = Script(error(429, "overloaded", {"Retry-After": "2"}))
    with sync_client(script) as client:
        assert client.score_batch(PROMPTS[:2], RESPONSES[:2]) == EXPECTED[:2]
    assert len(script.requests) == 2
    assert len(waits) == 1 and waits[0] >= 2.0


def test_not_ready_and_connection_errors_are_retried(waits):
    script = Script(error(503, "not_ready", {"Retry-After": "1"}), httpx.ConnectError, httpx.ReadTimeout)
    with sync_client(script) as client:
        assert client.score("p", "abc") == reward_of("p", "abc")
    assert len(script.requests) == 4
    assert len(waits) == 3


def test_validation_error_is_raised_at_once_with_the_server_message(waits):
    script = Script(error(422, "validation_error"))
    with sync_client(script) as client, pytest.raises(RewardRequestError) as raised:
        client.score("p", "r")
    assert raised.value.status_code == 422 and raised.value.error_type == "validation_error"
    assert len(script.requests) == 1 and waits == []


def test_giving_up_raises_and_never_returns_a_reward(waits):
    script = Script(*[error(503, "not_ready")] * 10)
    with sync_client(script) as client, pytest.raises(RewardUnavailableError) as raised:
        client.score("p", "r")
    assert raised.value.attempts == FAST.max_retries + 1 == len(script.requests)
    assert "503" in str(raised.value)


def test_none_mode_gives_none_only_to_the_pairs_of_the_failed_chunk(waits):
    script = Script(error(422, "validation_error"))
    with sync_client(script, chunk_size=4, max_concurrency=1, on_error="none") as client:
        rewards = client.score_batch(PROMPTS, RESPONSES)
    assert rewards == [None] * 4 + EXPECTED[4:]


def test_a_dead_first_url_fails_over_at_once_and_the_live_one_is_preferred_after(waits):
    hosts: list[str] = []

    def first_url_dead(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host == "rm-a":
            raise httpx.ConnectError("connection refused", request=request)
        return scoring(request)

    with sync_client(first_url_dead, urls=["http://rm-a", "http://rm-b"]) as client:
        assert client.score("p", "ab") == reward_of("p", "ab")
        assert client.score("p", "abc") == reward_of("p", "abc")
    assert hosts == ["rm-a", "rm-b", "rm-b"]
    assert waits == [0.0]


def test_a_large_batch_is_chunked_and_returned_in_input_order():
    script = Script()
    with sync_client(script, chunk_size=3, max_concurrency=4) as client:
        assert client.score_batch(PROMPTS, RESPONSES) == EXPECTED
    sizes = sorted(len(json.loads(r.content)["items"]) for r in script.requests)
    assert sizes == [1, 3, 3, 3]


def test_batch_normalization_is_sent_as_one_request():
    script = Script()
    with sync_client(script, chunk_size=3) as client:
        client.score_batch(PROMPTS, RESPONSES, normalize="batch")
    assert len(script.requests) == 1
    assert json.loads(script.requests[0].content)["normalize"] == "batch"


def test_options_and_namespace_header_pass_through_and_calls_override_them():
    script = Script()
    with sync_client(script, namespace="run-1", alpha=0.2, clip=3.0) as client:
        client.score("p", "r")
        client.score("p", "r", namespace="run-2", alpha=0.9)
    first, second = (json.loads(r.content) for r in script.requests)
    assert script.requests[0].headers["X-Namespace"] == "run-1"
    assert {k: first[k] for k in ("namespace", "alpha", "clip")} == {
        "namespace": "run-1",
        "alpha": 0.2,
        "clip": 3.0,
    }
    assert script.requests[1].headers["X-Namespace"] == "run-2"
    assert (second["namespace"], second["alpha"], second["clip"]) == ("run-2", 0.9, 3.0)


def test_no_namespace_sends_no_header_and_no_unset_options():
    script = Script()
    with sync_client(script) as client:
        client.score("p", "r")
    assert "X-Namespace" not in script.requests[0].headers
    assert set(json.loads(script.requests[0].content)) == {"items"}


def test_empty_prompts_are_refused_locally_or_get_none_and_empty_responses_are_sent():
    script = Script()
    with sync_client(script) as client, pytest.raises(ValueError, match=r"\[1\]"):
        client.score_batch(["a", "", "c"], ["x", "y", "z"])
    assert script.requests == []
    with sync_client(script, on_error="none") as client:
        assert client.score_batch(["a", "", "c"], ["x", "y", ""]) == [
            reward_of("a", "x"),
            None,
            reward_of("c", ""),
        ]
    assert json.loads(script.requests[0].content)["items"] == [
        {"prompt": "a", "response": "x"},
        {"prompt": "c", "response": ""},
    ]


def test_a_reward_count_that_does_not_match_the_pairs_is_an_error():
    script = Script(httpx.Response(200, json={"rewards": [1.0]}))
    with sync_client(script) as client, pytest.raises(RewardClientError, match="1 rewards for 2 pairs"):
        client.score_batch(["a", "b"], ["x", "y"])


def test_mismatched_lengths_and_bad_settings_are_refused():
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        sync_client(Script()).score_batch(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="on_error"):
        RewardClient("http://rm", on_error="zero")
    with pytest.raises(ValueError, match="base URL"):
        RewardClient([])


def test_async_client_chunks_retries_and_keeps_order(monkeypatch):
    waited: list[float] = []

    async def no_wait(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(client_module.asyncio, "sleep", no_wait)
    script = Script(error(429, "overloaded", {"Retry-After": "1"}), httpx.ConnectError)

    async def run() -> list:
        transport = httpx.MockTransport(script)
        async with AsyncRewardClient("http://rm", transport=transport, retry=FAST, chunk_size=4) as client:
            return await client.score_batch(PROMPTS, RESPONSES)

    assert asyncio.run(run()) == EXPECTED
    assert len(script.requests) == 3 + 2
    assert len(waited) == 2 and max(waited) >= 1.0


def test_async_client_raises_validation_errors():
    script = Script(error(422, "validation_error"))

    async def run() -> None:
        async with AsyncRewardClient(
            "http://rm", transport=httpx.MockTransport(script), retry=FAST
        ) as client:
            await client.score("p", "r")

    with pytest.raises(RewardRequestError):
        asyncio.run(run())
    assert len(script.requests) == 1


def test_environment_configures_a_client():
    environ = {
        "REWARD_SERVICE_URL": "http://rm-0:8000, http://rm-1:8000/",
        "REWARD_SERVICE_NAMESPACE": "run-7",
        "REWARD_SERVICE_CLIP": "2.5",
        "REWARD_SERVICE_CHUNK_SIZE": "16",
    }
    options = options_from_env(environ)
    assert options.pop("base_urls") == ["http://rm-0:8000", "http://rm-1:8000/"]
    assert options == {"namespace": "run-7", "clip": 2.5, "chunk_size": 16}
    assert options_from_env({})["base_urls"] == "http://127.0.0.1:8000"
    with pytest.raises(ValueError, match="REWARD_SERVICE_ALPHA='high'"):
        options_from_env({"REWARD_SERVICE_ALPHA": "high"})


def test_from_env_reads_the_process_environment_and_arguments_win(monkeypatch):
    monkeypatch.setenv("REWARD_SERVICE_URL", "http://rm-0:8000,http://rm-1:8000")
    with RewardClient.from_env(namespace="override") as client:
        assert client.base_urls == ["http://rm-0:8000", "http://rm-1:8000"]
        assert client._core.namespace == "override"
