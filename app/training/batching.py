"""Batches of pair indices grouped by length, so little compute goes to padding, and sharded across ranks."""

from __future__ import annotations

import random
from collections.abc import Sequence

POOL_BATCHES = 50  # batches per sorted pool: large enough to group lengths, small enough to stay random


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffle, sort within pools of POOL_BATCHES batches by length, cut into batches, shuffle the batches.
    Same (lengths, batch_size, seed) -> same batches on every rank."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * POOL_BATCHES
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def ordered_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Deterministic batches sorted by length (for evaluation: no randomness, least padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def shard_batches(batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """This rank's share; every rank gets the same number of batches (DDP steps must line up)."""
    if world_size == 1:
        return batches
    usable = len(batches) - len(batches) % world_size
    if usable == 0:
        raise ValueError(
            f"{len(batches)} batches cannot be shared by {world_size} processes: lower the batch size"
        )
    return batches[rank:usable:world_size]
