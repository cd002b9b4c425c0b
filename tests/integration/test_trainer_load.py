"""Trainers that cannot back off never lose a reward: 1,024 concurrent single-sample calls in OpenRLHF's
and verl's own request loops (app/adapters/callers.py), while another process burns a CPU, all get one.

The tiny model is fast, so the server's fast-refusal limits are made tight here (a queue wait of 10 ms, a
request timeout of 0.2 s): under this flood they refuse most requests of a route that used them, and
OpenRLHF's 5 tries at 1 s or verl's no-retry-on-4xx then lose rewards, as they did with the default model
at scale. The trainer routes use their own deadlines (trainer_max_queue_wait_s, trainer_request_timeout_s)
and so every sample is scored; /score keeps refusing fast under the same settings.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.adapters.callers import CallRecord, openrlhf_reward, verl_reward

pytestmark = pytest.mark.slow

CALLS = 1024
CONNECTIONS = 128  # the client's pool: the flood is 1,024 coroutines queued on it, as many as OpenRLHF's
TIGHT_FAST_LIMITS = {
    "REWARD_MAX_QUEUE_WAIT_S": "0.01",
    "REWARD_REQUEST_TIMEOUT_S": "0.2",
    "REWARD_LOG_LEVEL": "warning",
}
PROMPT = "<|im_start|>user\nhow do i boil an egg<|im_end|>\n<|im_start|>assistant\n"


def query(index: int) -> str:
    words = " ".join(["put the egg in boiling water for eight minutes"] * (1 + index % 5))
    return f"{PROMPT}{words} ({index})<|im_end|>"


@pytest.fixture
def busy_cpu() -> Iterator[None]:
    """Another process competing for the CPU, as a rollout worker or a second server would."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        burner.kill()
        burner.wait(timeout=10)


async def flood(url: str, call: Callable[[httpx.AsyncClient, int], asyncio.Future]) -> list[CallRecord]:
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(limits=limits, timeout=None) as client:
        return await asyncio.gather(*(call(client, i) for i in range(CALLS)))


def assert_every_sample_rewarded(records: list[CallRecord]) -> None:
    statuses = Counter(status for record in records for status in record.statuses)
    lost = [record.statuses for record in records if record.reward is None]
    assert not lost, f"{len(lost)} of {CALLS} samples lost their reward; statuses seen: {statuses}"
    assert all(isinstance(record.reward, float) for record in records)


def test_openrlhf_one_sample_per_request_flood_loses_no_reward(
    tiny_model_store: Path, server_factory: Callable, busy_cpu: None
) -> None:
    with server_factory(tiny_model_store, env=TIGHT_FAST_LIMITS) as server:
        url = f"{server.url}/get_reward"
        records = asyncio.run(flood(url, lambda client, i: openrlhf_reward(client, url, query(i), PROMPT)))
        assert_every_sample_rewarded(records)
        refused_fast = asyncio.run(flood_score(server.url))
    assert refused_fast, "with these limits /score sheds (429/504): the trainer route did not use them"


def test_verl_reward_loop_flood_on_classify_loses_no_reward(
    tiny_model_store: Path, server_factory: Callable, busy_cpu: None
) -> None:
    """verl's vLLM path; its SGLang path (/v1/embeddings) shares the trainer admission (test_compat.py)."""
    with server_factory(tiny_model_store, env=TIGHT_FAST_LIMITS) as server:
        records = asyncio.run(flood(server.url, lambda client, i: verl_reward(client, server.url, query(i))))
    assert_every_sample_rewarded(records)


async def flood_score(url: str, calls: int = 256) -> int:
    """Statuses 429/504 among a flood sent once to /score: the fast limits are in force there."""
    item = {"prompt": "\n\nHuman: how do i boil an egg\n\nAssistant:", "response": "eight minutes in water"}
    limits = httpx.Limits(max_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/score", json=item) for _ in range(calls)))
    return sum(response.status_code in (429, 504) for response in responses)
