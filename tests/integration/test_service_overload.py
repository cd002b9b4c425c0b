"""A flooded queue answers 429 with Retry-After at once (at admission: a refused request's items never
reach a forward pass); the server keeps serving afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import sample, scrape_metrics

# a tiny queue and a long batch wait: requests pile up while the worker waits for a batch to fill
FLOOD_ENV = {"REWARD_QUEUE_SIZE": "4", "REWARD_MAX_WAIT_MS": "200", "REWARD_MAX_BATCH_SIZE": "64"}
ITEMS = [
    {"prompt": "how do i boil an egg", "response": f"put it in boiling water for {i} minutes"}
    for i in range(2)
]


def test_flooded_queue_sheds_with_429_and_recovers(tiny_model_store: Path, server_factory: Callable) -> None:
    async def flood(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/score_batch", json={"items": ITEMS}) for _ in range(64))
            )

    with server_factory(tiny_model_store, env=FLOOD_ENV) as server:
        responses = asyncio.run(flood(server.url))
        shed = [r for r in responses if r.status_code == 429]
        served = [r for r in responses if r.status_code == 200]
        assert shed and served and len(shed) + len(served) == 64
        assert all(r.headers["retry-after"] == "1" for r in shed)
        assert {r.json()["error"]["type"] for r in shed} == {"overloaded"}
        assert all(len(r.json()["rewards"]) == 2 for r in served)
        metrics = scrape_metrics(server.url)
        computed = sample(metrics, "reward_batch_size_sum")  # the warm-up runs beside the batcher
        assert computed == len(ITEMS) * len(served), "refused requests were queued and computed"
        assert sample(metrics, "reward_queue_depth") == 0
        after = httpx.post(f"{server.url}/score_batch", json={"items": ITEMS}, timeout=30)
        assert after.status_code == 200
