"""Corrupt versions are refused while traffic continues: the live version keeps serving every request,
and the refusal shows in the admin answer, one log line and reward_reloads_total{outcome="refused"}."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.store import set_current, sha256_file, write_json_atomic
from tests.conftest import (
    RunningServer,
    publish_nan_version,
    publish_tiny_version,
    sample,
    sample_texts,
    scrape_metrics,
    start_server,
)

ADMIN_TOKEN = "reload-refusals-token"
LIVE = "v1"
TRAFFIC_CLIENTS = 4
MAX_TRAFFIC_REQUESTS = 200  # per client; the traffic stops when the reload answers
ITEMS = [{"prompt": p, "response": r} for p, r in zip(sample_texts(2, 21), sample_texts(2, 22), strict=True)]


def rehash(directory: Path) -> None:
    """Recompute the manifest's checksums, so that only the defect under test remains."""
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"] = {name: sha256_file(directory / name) for name in manifest["files"]}
    write_json_atomic(directory / "manifest.json", manifest)


def flip_a_weight_byte(directory: Path) -> None:
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))


def truncate_weights(directory: Path) -> None:
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    rehash(directory)


def outgrow_the_position_table(directory: Path) -> None:
    config = json.loads((directory / "config.json").read_text())
    config["encoding"]["max_len"] = 2 * config["model"]["max_len"]
    (directory / "config.json").write_text(json.dumps(config))
    rehash(directory)


def publish_corrupt(store: Path, version: str, corrupt: Callable[[Path], None] | None) -> None:
    """A sound tiny version, then `corrupt` applied to its files; None publishes NaN outputs instead."""
    if corrupt is None:
        publish_nan_version(store, version, make_current=False)
        return
    corrupt(publish_tiny_version(store, version, seed=7, make_current=False))


CORRUPTIONS = {
    "bad-checksum": (flip_a_weight_byte, "does not match the manifest"),
    "truncated-weights": (truncate_weights, "model.safetensors"),
    "incompatible-config": (outgrow_the_position_table, "incompatible config"),
    "nan-outputs": (None, "non-finite rewards"),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("model_store")
    publish_tiny_version(store, LIVE, seed=1)
    return store


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"REWARD_ADMIN_TOKEN": ADMIN_TOKEN, "REWARD_RELOAD_INTERVAL": "0.1"}
    with start_server(store, tmp_path_factory.mktemp("server"), env=env) as server:
        yield server


async def score_until(client: httpx.AsyncClient, done: asyncio.Event) -> list[tuple[int, str | None]]:
    answers = []
    for _ in range(MAX_TRAFFIC_REQUESTS):
        if done.is_set():
            break
        response = await client.post("/score_batch", json={"items": ITEMS})
        answers.append((response.status_code, response.json().get("model_version")))
    return answers


async def during_traffic(url: str, action: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]) -> tuple:
    """Run `action` while clients score; return its response and every (status, version) they got."""
    done = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
        traffic = [asyncio.create_task(score_until(client, done)) for _ in range(TRAFFIC_CLIENTS)]
        await asyncio.sleep(0.1)
        try:
            response = await action(client)
            await asyncio.sleep(0.1)
        finally:
            done.set()
        answers = [a for client_answers in await asyncio.gather(*traffic) for a in client_answers]
    return response, answers


def refusals(server: RunningServer) -> float:
    return sample(scrape_metrics(server.url), "reward_reloads_total", outcome="refused")


@pytest.mark.parametrize("version", list(CORRUPTIONS))
def test_a_corrupt_version_is_refused_by_the_admin_api_while_traffic_continues(
    version: str, store: Path, server: RunningServer
) -> None:
    corrupt, reason = CORRUPTIONS[version]
    publish_corrupt(store, version, corrupt)
    refused_before = refusals(server)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    response, answers = asyncio.run(
        during_traffic(
            server.url, lambda c: c.post("/admin/reload", json={"version": version}, headers=headers)
        )
    )

    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["type"] == "checkpoint_error" and reason in error["message"], error
    assert error["details"] == [{"version": version, "serving": LIVE}]
    assert answers and set(answers) == {(200, LIVE)}
    assert refusals(server) == refused_before + 1
    assert server.log().count(f"model version {version} refused, {LIVE} keeps serving") == 1


def test_the_watcher_refuses_a_corrupt_current_once_and_still_takes_the_next_good_one(tmp_path: Path) -> None:
    store = tmp_path / "model_store"
    publish_tiny_version(store, LIVE, seed=1)
    publish_corrupt(store, "watched-nan", None)
    with start_server(store, tmp_path, env={"REWARD_RELOAD_INTERVAL": "0.1"}) as server:
        watch_a_refusal_then_a_good_version(store, server)


async def polls_observed(server: RunningServer, count: int) -> None:
    """Wait until the watcher has polled the store `count` more times (reward_store_checks_total)."""

    def polls() -> float:
        return sample(scrape_metrics(server.url), "reward_store_checks_total")

    target, deadline = polls() + count, time.monotonic() + 20
    while polls() < target:
        assert time.monotonic() < deadline, f"the watcher did not poll {count} times within 20 s"
        await asyncio.sleep(0.05)


def watch_a_refusal_then_a_good_version(store: Path, server: RunningServer) -> None:
    refused_before = refusals(server)

    async def point_current_at_it_and_wait(client: httpx.AsyncClient) -> httpx.Response:
        await asyncio.to_thread(set_current, store, "watched-nan")
        deadline = time.monotonic() + 20
        while refusals(server) == refused_before:
            assert time.monotonic() < deadline, "the watcher did not try the new CURRENT within 20 s"
            await asyncio.sleep(0.1)
        await polls_observed(server, 5)  # a refused version must not be retried by later polls
        return await client.get("/readyz")

    ready, answers = asyncio.run(during_traffic(server.url, point_current_at_it_and_wait))

    assert ready.json()["model_version"] == LIVE
    assert answers and set(answers) == {(200, LIVE)}
    assert refusals(server) == refused_before + 1
    assert server.log().count("model version watched-nan refused") == 1
    publish_tiny_version(store, "v2", seed=2)
    deadline = time.monotonic() + 20
    while httpx.get(f"{server.url}/readyz").json()["model_version"] != "v2":
        assert time.monotonic() < deadline, "the watcher stopped after a refusal"
        time.sleep(0.1)
