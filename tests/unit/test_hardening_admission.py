"""Admission by expected queue wait: the batcher refuses work that a slow model could not start in time,
instead of queueing minutes of it behind a count bound."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.batcher import BatchPolicy, MicroBatcher
from app.errors import Overloaded

SECONDS_PER_ITEM = 0.01  # a model computing 100 items/s


def slow_model(payloads: list[int]) -> list[int]:
    time.sleep(SECONDS_PER_ITEM * len(payloads))
    return list(payloads)


def batcher_with_wait_limit(limit_s: float) -> MicroBatcher:
    policy = BatchPolicy(max_batch_size=4, max_wait_s=0.0, queue_size=10_000, max_queue_wait_s=limit_s)
    return MicroBatcher(slow_model, policy)


async def measured(limit_s: float) -> MicroBatcher:
    """A running batcher that has measured its throughput (about 100 items/s)."""
    batcher = batcher_with_wait_limit(limit_s)
    batcher.start()
    assert await batcher.run([1, 2, 3, 4], [1] * 4, group=0) == [1, 2, 3, 4]
    return batcher


def test_work_queued_behind_too_long_a_wait_is_refused_and_served_once_it_drains() -> None:
    async def scenario() -> None:
        batcher = await measured(0.2)
        try:
            backlog = batcher.submit(list(range(30)), [1] * 30, group=0)  # idle: admitted, 0.3 s of work
            with pytest.raises(Overloaded, match="max_queue_wait_s") as refused:
                batcher.submit([99], [1], group=0)  # would wait about 0.3 s
            assert refused.value.retry_after >= 1
            assert len(await asyncio.gather(*backlog)) == 30
            assert await batcher.run([5, 6], [1, 1], group=0) == [5, 6]
        finally:
            await batcher.stop()

    asyncio.run(scenario())


def test_an_idle_server_admits_a_request_larger_than_the_wait_limit() -> None:
    async def scenario() -> int:
        batcher = await measured(0.2)
        try:
            return len(await batcher.run(list(range(100)), [1] * 100, group=0))  # 1 s of its own work
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == 100


def test_without_a_measurement_or_a_limit_only_the_count_bound_applies() -> None:
    async def scenario(limit_s: float, warm: bool) -> int:
        batcher = await measured(limit_s) if warm else batcher_with_wait_limit(limit_s)
        batcher.start()
        try:
            first = batcher.submit(list(range(100)), [1] * 100, group=0)
            second = batcher.submit(list(range(100)), [1] * 100, group=0)
            return len(await asyncio.gather(*first, *second))
        finally:
            await batcher.stop()

    assert asyncio.run(scenario(0.2, warm=False)) == 200  # no throughput measured yet
    assert asyncio.run(scenario(0.0, warm=True)) == 200  # limit off


def test_items_taken_for_the_current_round_count_towards_the_wait() -> None:
    async def scenario() -> None:
        batcher = await measured(0.2)
        try:
            backlog = batcher.submit(list(range(24)), [1] * 24, group=0)
            while batcher.queue_depth > 8:  # the worker takes 16 as one round (4 batches of 4)
                await asyncio.sleep(0.001)
            with pytest.raises(Overloaded):  # 8 queued + 16 in the round: 0.24 s
                batcher.submit([99], [1], group=0)
            assert len(await asyncio.gather(*backlog)) == 24
        finally:
            await batcher.stop()

    asyncio.run(scenario())
