"""Normalization modes end to end: none, batch, running per namespace, its stats endpoints and snapshot."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import sample_texts

ADMIN_TOKEN = "a-long-enough-admin-token-for-tests"


def items(count: int, seed: int) -> list[dict]:
    return [
        {"prompt": p, "response": r}
        for p, r in zip(sample_texts(count, seed), sample_texts(count, seed + 1), strict=True)
    ]


def post_batch(url: str, body: dict) -> dict:
    response = httpx.post(f"{url}/score_batch", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_none_returns_the_hybrid_reward(server_url: str) -> None:
    result = post_batch(server_url, {"items": items(4, 1), "normalize": "none"})
    assert result["rewards"] == [item["hybrid_reward"] for item in result["items"]]


def test_batch_gives_zero_mean_unit_std_within_the_request(server_url: str) -> None:
    result = post_batch(server_url, {"items": items(16, 2), "normalize": "batch"})
    assert statistics.fmean(result["rewards"]) == pytest.approx(0.0, abs=1e-9)
    assert statistics.pstdev(result["rewards"]) == pytest.approx(1.0, abs=1e-4)
    single = httpx.post(f"{server_url}/score", json={**items(1, 3)[0], "normalize": "batch"}).json()
    assert single["reward"] == 0.0  # documented: one item has no spread


def test_running_stats_follow_the_namespace_stream(server_url: str) -> None:
    namespace = "run-running"
    hybrids = []
    for seed in range(5):
        result = post_batch(
            server_url, {"items": items(8, 10 + seed), "normalize": "running", "namespace": namespace}
        )
        hybrids += [item["hybrid_reward"] for item in result["items"]]
    stats = httpx.get(f"{server_url}/v1/stats/{namespace}").json()
    assert stats["count"] == 40 and stats["momentum"] == 0.99
    assert min(hybrids) < stats["mean"] < max(hybrids)
    last = result["items"][0]
    std = stats["variance"] ** 0.5
    assert last["normalized_reward"] == pytest.approx((last["hybrid_reward"] - stats["mean"]) / (std + 1e-6))


def test_namespaces_never_mix(server_url: str) -> None:
    body = {"items": items(4, 20), "normalize": "running"}
    post_batch(server_url, {**body, "namespace": "iso-a"})
    before = httpx.get(f"{server_url}/v1/stats/iso-a").json()
    shifted = [{"prompt": "p", "response": "idiot " * 5}] * 4  # very different rewards
    post_batch(server_url, {"items": shifted, "normalize": "running", "namespace": "iso-b"})
    assert httpx.get(f"{server_url}/v1/stats/iso-a").json() == before
    assert httpx.get(f"{server_url}/v1/stats/iso-b").json()["mean"] != before["mean"]
    assert httpx.get(f"{server_url}/v1/stats/never-used").status_code == 404


def test_reset_is_disabled_without_an_admin_token(server_url: str) -> None:
    post_batch(server_url, {"items": items(2, 30), "normalize": "running", "namespace": "locked"})
    response = httpx.delete(f"{server_url}/v1/stats/locked", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 403 and response.json()["error"]["type"] == "admin_disabled"


def test_reset_needs_the_right_token_and_stats_survive_a_restart(
    tiny_model_store: Path, server_factory: Callable, tmp_path: Path
) -> None:
    env = {"REWARD_ADMIN_TOKEN": ADMIN_TOKEN, "REWARD_STATS_PATH": str(tmp_path / "stats.json")}
    with server_factory(tiny_model_store, env=env) as server:
        for namespace in ("keep", "drop"):
            post_batch(server.url, {"items": items(6, 40), "normalize": "running", "namespace": namespace})
        kept = httpx.get(f"{server.url}/v1/stats/keep").json()
        assert httpx.delete(f"{server.url}/v1/stats/drop").status_code == 401
        wrong = httpx.delete(f"{server.url}/v1/stats/drop", headers={"Authorization": "Bearer wrong-token"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        right = httpx.delete(
            f"{server.url}/v1/stats/drop", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert right.json() == {"namespace": "drop", "reset": True}
    with server_factory(tiny_model_store, env=env) as restarted:
        assert httpx.get(f"{restarted.url}/v1/stats/keep").json() == kept
        assert httpx.get(f"{restarted.url}/v1/stats/drop").status_code == 404


def test_clip_applies_after_normalization(server_url: str) -> None:
    result = post_batch(server_url, {"items": items(16, 50), "normalize": "batch", "clip": 0.5})
    assert max(abs(r) for r in result["rewards"]) == 0.5
    assert max(abs(item["normalized_reward"]) for item in result["items"]) > 0.5
