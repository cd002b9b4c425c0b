from __future__ import annotations

import random

import pytest

from app.training.batching import length_grouped_batches, ordered_batches, shard_batches


def test_every_index_appears_once_and_batches_group_similar_lengths() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(5, 500) for _ in range(1000)]
    batches = length_grouped_batches(lengths, batch_size=8, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    random_batches = [list(range(i, min(i + 8, 1000))) for i in range(0, 1000, 8)]
    padded_random = sum(len(b) * max(lengths[i] for i in b) for b in random_batches)
    assert padded < 0.75 * padded_random  # grouping saves most of the padding


def test_batches_depend_on_the_seed_only() -> None:
    lengths = list(range(100))
    assert length_grouped_batches(lengths, 4, seed=3) == length_grouped_batches(lengths, 4, seed=3)
    assert length_grouped_batches(lengths, 4, seed=3) != length_grouped_batches(lengths, 4, seed=4)


def test_ordered_batches_are_sorted_by_length() -> None:
    assert ordered_batches([5, 1, 3, 2], 2) == [[1, 3], [2, 0]]


def test_shards_are_disjoint_and_equal_in_size() -> None:
    batches = [[i] for i in range(7)]
    shards = [shard_batches(batches, rank, 2) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3
    assert not {b[0] for b in shards[0]} & {b[0] for b in shards[1]}


def test_too_few_batches_for_the_processes_is_an_error() -> None:
    with pytest.raises(ValueError, match="lower the batch size"):
        shard_batches([[0]], 0, 2)
