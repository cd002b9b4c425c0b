"""BatchScorer alone (the batcher's run_batch), called directly with the tiny real checkpoint's ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.admission import PairPayload
from app.errors import InferenceError
from app.heuristics import HeuristicConfig, heuristic_score
from app.registry import ModelRegistry
from app.service import BatchScorer, ItemParts, ModelHealth
from app.store import LoadedVersion
from tests.conftest import publish_tiny_version, sample_texts

PROMPTS, RESPONSES = sample_texts(4, seed=5), sample_texts(4, seed=6)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistry]:
    """A registry of its own: tests here damage the weights of the versions they load."""
    publish_tiny_version(tmp_path, "v1")
    registry = ModelRegistry(tmp_path, device="cpu", dtype="float32")
    yield registry
    registry.close()


def payloads_of(version: LoadedVersion) -> list[PairPayload]:
    ids = version.backend.encode(PROMPTS, RESPONSES)
    return [
        PairPayload(one, heuristic_score(response, HeuristicConfig()), version)
        for one, response in zip(ids, RESPONSES, strict=True)
    ]


def test_rewards_are_calibrated_and_in_input_order(registry: ModelRegistry) -> None:
    version = registry.load()
    mean, std = version.calibration
    parts = BatchScorer(ModelHealth())(payloads_of(version))
    alone = [version.backend.forward([p.ids])[0] for p in payloads_of(version)]
    assert [p.model_raw for p in parts] == pytest.approx(alone, abs=1e-4)
    assert [p.model_reward for p in parts] == pytest.approx([(r - mean) / std for r in alone], abs=1e-4)


def test_a_batch_mixing_versions_is_refused(registry: ModelRegistry) -> None:
    old, new = registry.load(), registry.load()
    with pytest.raises(RuntimeError, match="mixes model versions"):
        BatchScorer(ModelHealth())(payloads_of(old)[:2] + payloads_of(new)[2:])


def test_a_non_finite_reward_fails_only_its_item_and_never_counts_against_the_model(
    registry: ModelRegistry,
) -> None:
    version = registry.load()
    payloads = payloads_of(version)
    poisoned = next(
        t for t in payloads[1].ids if all(t not in p.ids for p in payloads if p is not payloads[1])
    )
    with torch.no_grad():  # a token only item 1 has reads a NaN embedding
        version.backend.model.embeddings.tokens.weight[poisoned].fill_(float("nan"))
    health = ModelHealth()

    parts = BatchScorer(health)(payloads)

    assert isinstance(parts[1], InferenceError) and "non-finite" in parts[1].message
    assert all(isinstance(parts[i], ItemParts) for i in (0, 2, 3))
    assert health.consecutive_failures == 0


def test_a_batch_whose_every_item_fails_with_its_canary_too_is_recorded_against_the_model(
    registry: ModelRegistry,
) -> None:
    version = registry.load()
    with torch.no_grad():
        version.backend.model.head.net[-1].bias.fill_(float("nan"))
    health = ModelHealth()

    parts = BatchScorer(health)(payloads_of(version))

    assert all(isinstance(p, InferenceError) and "non-finite" in p.message for p in parts)
    assert (health.consecutive_failures, health.failing_version) == (1, "v1")
