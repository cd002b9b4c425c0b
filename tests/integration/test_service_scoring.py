"""End to end on the real server with the tiny checkpoint: /score, /score_batch, batching, concurrency."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import TINY_VERSION, sample_texts

PAIR = {"prompt": "how do i boil an egg", "response": "put the egg in boiling water for eight minutes"}


def score(url: str, **body) -> dict:
    response = httpx.post(f"{url}/score", json={**PAIR, **body}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def score_batch(url: str, items: list[dict], **options) -> dict:
    response = httpx.post(f"{url}/score_batch", json={"items": items, **options}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def mixed_length_items(count: int) -> list[dict]:
    prompts, responses = sample_texts(count, seed=11), sample_texts(count, seed=12)
    return [
        {"prompt": p * (1 + i % 4), "response": r}
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
    ]


def test_score_returns_the_reward_and_its_consistent_parts(server_url: str) -> None:
    result = score(server_url)
    calibration = httpx.get(f"{server_url}/v1/model").json()["calibration"]
    expected_model = (result["model_raw"] - calibration["reward_mean"]) / calibration["reward_std"]
    assert result["model_version"] == TINY_VERSION
    assert result["model_reward"] == pytest.approx(expected_model)
    assert result["hybrid_reward"] == pytest.approx(
        0.5 * result["heuristic_reward"] + 0.5 * result["model_reward"]
    )
    assert result["reward"] == result["normalized_reward"] == result["hybrid_reward"]
    assert (result["alpha"], result["beta"], result["normalize"]) == (0.5, 0.5, "none")


def test_alpha_and_beta_override_the_server_mix(server_url: str) -> None:
    heuristic_only = score(server_url, alpha=1.0)
    model_only = score(server_url, beta=1.0)
    weighted = score(server_url, alpha=3 / 4, beta=1 / 4)  # already sums to 1
    unnormalized = score(server_url, alpha=0.6, beta=0.2)  # normalized to 0.75 / 0.25
    assert heuristic_only["reward"] == pytest.approx(heuristic_only["heuristic_reward"])
    assert model_only["reward"] == pytest.approx(model_only["model_reward"])
    assert unnormalized["reward"] == pytest.approx(weighted["reward"])
    assert (unnormalized["alpha"], unnormalized["beta"]) == pytest.approx((0.75, 0.25))


def test_score_batch_keeps_input_order_and_matches_single_scores(server_url: str) -> None:
    items = mixed_length_items(5)
    batch = score_batch(server_url, items)
    singles = [score(server_url, **item)["reward"] for item in items]
    assert batch["model_version"] == TINY_VERSION
    assert batch["rewards"] == pytest.approx(singles, abs=1e-4)
    assert [item["reward"] for item in batch["items"]] == batch["rewards"]


def test_a_reward_is_the_same_alone_and_in_a_batch_of_64_mixed_lengths(server_url: str) -> None:
    items = mixed_length_items(64)
    batch = score_batch(server_url, items)
    with httpx.Client(timeout=30) as client:
        alone = [client.post(f"{server_url}/score", json=item).json()["model_raw"] for item in items]
    assert [item["model_raw"] for item in batch["items"]] == pytest.approx(alone, abs=1e-4)


def test_32_concurrent_clients_each_get_their_own_rewards(server_url: str) -> None:
    items = mixed_length_items(32)
    expected = [item["reward"] for item in score_batch(server_url, items)["items"]]

    async def drive() -> list[dict]:
        async with httpx.AsyncClient(base_url=server_url, timeout=60) as client:
            responses = await asyncio.gather(*(client.post("/score", json=item) for item in items))
        return [r.json() for r in responses]

    results = asyncio.run(drive())
    assert [r["reward"] for r in results] == pytest.approx(expected, abs=1e-4)
    assert {r["model_version"] for r in results} == {TINY_VERSION}


def test_heuristic_cases_from_the_design(server_url: str) -> None:
    plain = score(server_url, alpha=1.0)
    toxic = score(server_url, alpha=1.0, response="you stupid idiot, you are a pathetic worthless moron")
    short = score(server_url, alpha=1.0, response="No.")
    repetitive = score(server_url, alpha=1.0, response="buy now " * 20)
    assert plain["reward"] == 1.0
    assert toxic["reward"] < 0.5 and toxic["heuristic"]["toxicity"] == 1.0
    assert short["reward"] == pytest.approx(0.5)
    assert repetitive["heuristic"]["repetition_penalty"] == pytest.approx(2.0 * (0.5 - 2 / 40))


def test_clip_bounds_the_final_reward(server_url: str) -> None:
    unclipped = score(server_url, beta=1.0, response="so")
    bound = abs(unclipped["reward"]) / 2
    clipped = score(server_url, beta=1.0, response="so", clip=bound)
    assert clipped["reward"] == pytest.approx(bound if unclipped["reward"] > 0 else -bound)
    assert clipped["normalized_reward"] == unclipped["reward"]


def test_health_readiness_and_model_info(server_url: str) -> None:
    assert httpx.get(f"{server_url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{server_url}/readyz").json()
    assert (ready["status"], ready["model_version"]) == ("ready", TINY_VERSION)
    assert set(ready["stats_snapshot"]) == {"last_success", "failures", "last_error"}
    info = httpx.get(f"{server_url}/v1/model").json()
    assert info["version"] == TINY_VERSION
    assert (info["architecture"]["hidden"], info["architecture"]["layers"], info["encoding"]["max_len"]) == (
        64,
        2,
        64,
    )
    assert info["parameters"] > 0 and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["manifest"]["version"] == TINY_VERSION and "reward_mean" in info["metrics"]


def test_responses_carry_a_request_id(server_url: str) -> None:
    echoed = httpx.get(f"{server_url}/healthz", headers={"X-Request-ID": "rollout-7.step-3"})
    assert echoed.headers["x-request-id"] == "rollout-7.step-3"
    assert len(httpx.get(f"{server_url}/healthz").headers["x-request-id"]) == 32
