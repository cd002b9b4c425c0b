"""Hot reload under continuous load: new versions go live (by the store watcher and by the admin API) and
one rollback happens while 8 clients score without pause. Not one request fails, and every response was
scored by the version it names, a version that was live while the request was in flight."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.backends.warmup import forward_raw
from app.store import load_version
from tests.conftest import publish_tiny_version, sample, sample_texts, scrape_metrics, start_server

ADMIN_TOKEN = "reload-under-load-token"
CLIENTS = 8
MAX_REQUESTS_PER_CLIENT = 400  # a bound, in case the swaps finish late; they normally stop the clients
TRAFFIC_BETWEEN_SWAPS_S = 0.4
PROMPTS, RESPONSES = sample_texts(3, seed=11), sample_texts(3, seed=12)


@dataclass
class Scored:
    sent: float
    received: float
    version: str
    model_raw: list[float]  # in PROMPTS order (one item for /score)
    pair_indices: list[int]


@dataclass
class LiveIntervals:
    """When each version may have been live: from the start of the action that swapped it in to the end
    of the action that swapped it out (the exact instant lies somewhere inside those actions)."""

    intervals: list[tuple[str, float, float]] = field(default_factory=list)

    def swap(self, version: str, started: float, finished: float) -> None:
        if self.intervals:
            old, since, _ = self.intervals[-1]
            self.intervals[-1] = (old, since, finished)
        self.intervals.append((version, started, math.inf))

    def was_live_during(self, version: str, sent: float, received: float) -> bool:
        return any(v == version and since <= received and sent <= until for v, since, until in self.intervals)


async def score_continuously(client: httpx.AsyncClient, index: int, stop: asyncio.Event) -> tuple[list, list]:
    """Alternate /score and /score_batch until told to stop; return (scored, failures)."""
    scored, failures = [], []
    for i in range(MAX_REQUESTS_PER_CLIENT):
        if stop.is_set():
            break
        single = (index + i) % 2 == 0
        pairs = [(index + i) % 3] if single else [0, 1, 2]
        items = [{"prompt": PROMPTS[p], "response": RESPONSES[p]} for p in pairs]
        sent = time.monotonic()
        try:
            response = await (client.post("/score", json=items[0]) if single else
                              client.post("/score_batch", json={"items": items}))  # fmt: skip
        except httpx.HTTPError as exc:
            failures.append(repr(exc))
            continue
        received = time.monotonic()
        if response.status_code != 200:
            failures.append(f"{response.status_code} {response.text}")
            continue
        body = response.json()
        raw = [body["model_raw"]] if single else [item["model_raw"] for item in body["items"]]
        scored.append(Scored(sent, received, body["model_version"], raw, pairs))
    return scored, failures


def expected_raw(store: Path, version: str) -> list[float]:
    """What `version` gives the three test pairs, computed here from its files."""
    return forward_raw(load_version(store / version), PROMPTS, RESPONSES)


class Operator:
    """Publishes, reloads and rolls back, recording when each version became live."""

    def __init__(self, client: httpx.AsyncClient, store: Path):
        self.client, self.store = client, store
        self.live = LiveIntervals()
        self.expected: dict[str, list[float]] = {}
        self.admin_answers: list[dict] = []

    async def publish(self, version: str, seed: int, make_current: bool) -> None:
        await asyncio.to_thread(publish_tiny_version, self.store, version, seed, make_current)
        self.expected[version] = await asyncio.to_thread(expected_raw, self.store, version)

    async def publish_for_the_watcher(self, version: str, seed: int) -> None:
        started = time.monotonic()
        await self.publish(version, seed, make_current=True)
        deadline = time.monotonic() + 30
        while (await self.client.get("/readyz")).json()["model_version"] != version:
            assert time.monotonic() < deadline, f"the watcher did not bring {version} live within 30 s"
            await asyncio.sleep(0.05)
        self.live.swap(version, started, time.monotonic())

    async def admin(self, path: str, version: str, body: dict | None = None) -> None:
        started = time.monotonic()
        response = await self.client.post(path, json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert response.status_code == 200, response.text
        self.live.swap(version, started, time.monotonic())
        self.admin_answers.append(response.json())


async def run_scenario(url: str, store: Path) -> tuple[Operator, list[Scored], list[str]]:
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        operator = Operator(client, store)
        operator.live.swap("v1", -math.inf, -math.inf)
        operator.expected["v1"] = expected_raw(store, "v1")
        clients = [asyncio.create_task(score_continuously(client, i, stop)) for i in range(CLIENTS)]
        try:
            await asyncio.sleep(TRAFFIC_BETWEEN_SWAPS_S)
            await operator.publish_for_the_watcher("v2", seed=2)
            await asyncio.sleep(TRAFFIC_BETWEEN_SWAPS_S)
            await operator.publish("v3", seed=3, make_current=False)
            await operator.admin("/admin/reload", "v3", {"version": "v3"})
            await asyncio.sleep(TRAFFIC_BETWEEN_SWAPS_S)
            await operator.publish_for_the_watcher("v4", seed=4)
            await asyncio.sleep(TRAFFIC_BETWEEN_SWAPS_S)
            await operator.admin("/admin/rollback", "v3")
            await asyncio.sleep(TRAFFIC_BETWEEN_SWAPS_S)
            await operator.publish("v5", seed=5, make_current=False)
            await operator.admin("/admin/reload", "v5", {"version": "v5"})
            await asyncio.sleep(TRAFFIC_BETWEEN_SWAPS_S)
        finally:
            stop.set()
            results = await asyncio.gather(*clients)
    scored = [s for client_scored, _ in results for s in client_scored]
    failures = [f for _, client_failures in results for f in client_failures]
    return operator, scored, failures


@pytest.fixture
def store(tmp_path: Path) -> Path:
    store = tmp_path / "model_store"
    publish_tiny_version(store, "v1", seed=1)
    return store


def test_swaps_and_a_rollback_under_load_fail_no_request(store: Path, tmp_path: Path) -> None:
    env = {"REWARD_ADMIN_TOKEN": ADMIN_TOKEN, "REWARD_RELOAD_INTERVAL": "0.1"}
    with start_server(store, tmp_path, env=env) as server:
        operator, scored, failures = asyncio.run(run_scenario(server.url, store))
        samples = scrape_metrics(server.url)

    assert failures == []
    assert {s.version for s in scored} == {"v1", "v2", "v3", "v4", "v5"}, "every version served traffic"
    not_live = [s for s in scored if not operator.live.was_live_during(s.version, s.sent, s.received)]
    assert not_live == [], f"responses naming a version that was not live then: {not_live[:3]}"
    for s in scored:  # the version named is the one that computed the reward
        expected = [operator.expected[s.version][p] for p in s.pair_indices]
        assert s.model_raw == pytest.approx(expected, rel=1e-3, abs=1e-4), s
    assert [(a["outcome"], a["model_version"], a["previous_version"]) for a in operator.admin_answers] == [
        ("success", "v3", "v2"), ("rollback", "v3", "v4"), ("success", "v5", "v3"),
    ]  # fmt: skip
    assert sample(samples, "reward_reloads_total", outcome="success") == 4
    assert sample(samples, "reward_reloads_total", outcome="rollback") == 1
    assert sample(samples, "reward_reloads_total", outcome="refused") == 0
    assert sample(samples, "reward_model_info", version="v5") == 1
