"""ScoringService without HTTP: the tiny real checkpoint, a real MicroBatcher and BatchScorer on the
compute thread the registry loads on, as the server builds them."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import torch

from app.admission import Admission
from app.backends.warmup import forward_raw
from app.batcher import BatchPolicy, MicroBatcher
from app.config import Settings
from app.errors import InferenceError, InvalidInput, NotReady
from app.heuristics import HeuristicConfig, heuristic_score
from app.normalize import RunningStats
from app.registry import ModelRegistry
from app.schemas import Pair, ScoreBatchRequest, ScoreOptions, ScoreRequest
from app.service import BatchScorer, ModelHealth, ScoringDefaults, ScoringService
from tests.conftest import TINY_VERSION, publish_tiny_version, sample_texts

T = TypeVar("T")
PAIRS = [
    Pair(prompt=prompt, response=response)
    for prompt, response in zip(sample_texts(6, seed=3), sample_texts(6, seed=4), strict=True)
]


def serving_registry(store: Path) -> ModelRegistry:
    registry = ModelRegistry(store, device="cpu", dtype="float32")
    registry.activate(registry.load())
    return registry


@pytest.fixture(scope="module")
def registry(tiny_model_store: Path) -> Iterator[ModelRegistry]:
    registry = serving_registry(tiny_model_store)
    yield registry
    registry.close()


def with_service(
    registry: ModelRegistry, scenario: Callable[[ScoringService], Awaitable[T]], **defaults: object
) -> T:
    """Run `scenario` against a ScoringService built as the server builds it; stop everything after."""

    async def run() -> T:
        health = ModelHealth()
        batcher = MicroBatcher(BatchScorer(health), BatchPolicy(max_batch_size=4), compute=registry.compute)
        admission = Admission(HeuristicConfig())
        stats = RunningStats(momentum=0.9, eps=1e-6, max_namespaces=8)
        service = ScoringService(
            registry, batcher, admission, health, stats, ScoringDefaults.from_settings(Settings(**defaults))
        )
        batcher.start()
        try:
            return await scenario(service)
        finally:
            await batcher.stop()
            admission.close()

    return asyncio.run(run())


def score(registry: ModelRegistry, pairs: list[Pair], **options: object):
    return with_service(
        registry, lambda service: service.score(pairs, ScoreOptions(**options), ScoreBatchRequest.text_loc)
    )


def test_rewards_come_back_in_input_order_and_match_each_pair_scored_alone(registry: ModelRegistry) -> None:
    version = registry.current
    mean, std = version.calibration
    result = score(registry, PAIRS, alpha=0.3, beta=0.7)

    assert result.model_version == TINY_VERSION and len(result.items) == len(PAIRS)
    for pair, item in zip(PAIRS, result.items, strict=True):
        raw = forward_raw(version, [pair.prompt], [pair.response])[0]
        heuristic = heuristic_score(pair.response, HeuristicConfig()).reward
        assert item.model_raw == pytest.approx(raw, abs=1e-4)
        assert item.model_reward == pytest.approx((raw - mean) / std, abs=1e-4)
        assert item.heuristic_reward == pytest.approx(heuristic)
        assert item.reward == pytest.approx(0.3 * heuristic + 0.7 * item.model_reward, abs=1e-4)
    assert result.rewards == [item.reward for item in result.items]
    assert result.input_tokens > len(PAIRS)


def test_the_server_defaults_apply_when_the_request_gives_no_weights(registry: ModelRegistry) -> None:
    result = with_service(
        registry,
        lambda s: s.score(PAIRS[:2], ScoreOptions(), ScoreBatchRequest.text_loc),
        alpha=1.0,
        beta=0.0,
    )
    assert (result.alpha, result.beta) == (1.0, 0.0)
    assert [item.reward for item in result.items] == [item.heuristic_reward for item in result.items]


def test_batch_normalization_gives_zero_mean_and_unit_spread(registry: ModelRegistry) -> None:
    result = score(registry, PAIRS, normalize="batch")
    hybrids = [item.hybrid_reward for item in result.items]
    assert len(set(hybrids)) > 1  # something to normalize
    assert sum(result.rewards) == pytest.approx(0.0, abs=1e-6)
    assert math.fsum(r * r for r in result.rewards) / len(PAIRS) == pytest.approx(1.0, abs=1e-3)


def test_clip_bounds_the_final_reward_but_not_the_parts_before_it(registry: ModelRegistry) -> None:
    result = score(registry, PAIRS, normalize="batch", clip=0.5)
    assert all(-0.5 <= r <= 0.5 for r in result.rewards)
    assert any(abs(item.normalized_reward) > 0.5 for item in result.items)  # the clip did something
    for item in result.items:
        assert item.reward == max(-0.5, min(0.5, item.normalized_reward))


def test_an_unencodable_text_is_refused_naming_the_item_and_field(registry: ModelRegistry) -> None:
    pairs = [PAIRS[0], Pair(prompt="fine", response="lone \ud800 surrogate")]
    with pytest.raises(InvalidInput) as refused:
        score(registry, pairs)
    assert [detail["loc"] for detail in refused.value.details] == [["body", "items", 1, "response"]]
    assert "response" in refused.value.message


def corrupt_weights(registry: ModelRegistry) -> None:
    """Make the live model's head output NaN for every input, as corrupt weights would."""
    with torch.no_grad():
        registry.current.backend.model.head.net[-1].bias.fill_(float("nan"))


def test_readiness_is_lost_after_model_failures_only_and_back_with_a_sound_version(tmp_path: Path) -> None:
    publish_tiny_version(tmp_path, "v1")
    registry = serving_registry(tmp_path)

    async def scenario(service: ScoringService) -> None:
        for _ in range(3):  # client errors never count against the model
            with pytest.raises(InvalidInput):
                await service.score(
                    [Pair(prompt="a", response="\ud800")], ScoreOptions(), ScoreRequest.text_loc
                )
        assert service.check_ready().version == "v1"

        corrupt_weights(registry)
        for failures in range(1, 4):
            with pytest.raises(InferenceError, match="non-finite"):
                await service.score(PAIRS[:1], ScoreOptions(), ScoreRequest.text_loc)
            assert service.health.consecutive_failures == failures
            if failures < service.defaults.unready_after_failures:
                service.check_ready()
        with pytest.raises(NotReady, match="last 3 batches failed") as refused:
            service.check_ready()
        assert refused.value.retry_after == 7  # the configured Retry-After, not the default

        publish_tiny_version(tmp_path, "v2", seed=2)
        registry.activate(registry.load())
        assert service.check_ready().version == "v2"  # the failures were v1's

    try:
        with_service(registry, scenario, unready_after_failures=3, retry_after_s=7)
    finally:
        registry.close()
