"""The micro-batcher with plain-Python `run_batch` callables: no torch, no HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Iterator

import pytest

from app.batcher import BatchPolicy, MicroBatcher
from app.compute import ComputePool
from app.errors import InferenceError, NotReady, Overloaded


class RecordingRunner:
    """run_batch that doubles its payloads and remembers every batch it saw; can be held at a gate."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[list] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, payloads: list) -> list:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=10)
        self.batches.append(list(payloads))
        return [p * 2 for p in payloads]


def policy(**overrides) -> BatchPolicy:
    return BatchPolicy(**{"max_batch_size": 4, "max_batch_tokens": 10_000, "max_wait_s": 0.01, **overrides})


async def with_batcher(runner, coro_fn, **overrides):
    batcher = MicroBatcher(runner, policy(**overrides))
    batcher.start()
    try:
        return await coro_fn(batcher)
    finally:
        await batcher.stop()


async def wait_entered(runner: RecordingRunner) -> None:
    await asyncio.to_thread(runner.entered.wait, 10)


def held_runner() -> RecordingRunner:
    """A RecordingRunner that holds every batch until `runner.gate.set()`."""
    return RecordingRunner(threading.Event())


async def occupy_worker(batcher: MicroBatcher, runner: RecordingRunner, group: str = "v1") -> asyncio.Task:
    """Start one item and wait until the held runner computes it, so that what follows queues behind it."""
    first = asyncio.create_task(batcher.run([0], [1], group=group))
    await wait_entered(runner)
    return first


@contextlib.contextmanager
def held_shared_compute() -> Iterator[tuple[RecordingRunner, ComputePool]]:
    """A held runner and a compute thread shared as the service's (stop() does not wait for it); both are
    released on exit whatever the test did."""
    runner, compute = held_runner(), ComputePool()
    try:
        yield runner, compute
    finally:
        runner.gate.set()
        compute.close()


def test_results_come_back_in_input_order_and_batches_respect_the_size_limit() -> None:
    runner = RecordingRunner()
    payloads = [5, 1, 9, 3, 7, 2, 8, 6, 4, 10]
    results = asyncio.run(with_batcher(runner, lambda b: b.run(payloads, payloads, group="v1")))
    assert results == [p * 2 for p in payloads]
    assert all(len(batch) <= 4 for batch in runner.batches)
    assert sorted(p for batch in runner.batches for p in batch) == sorted(payloads)


def test_batches_hold_items_of_similar_length() -> None:
    runner = RecordingRunner()
    lengths = [1, 100, 2, 99, 3, 98, 4, 97]
    asyncio.run(with_batcher(runner, lambda b: b.run(lengths, lengths, group="v1")))
    assert sorted(map(sorted, runner.batches)) == [[1, 2, 3, 4], [97, 98, 99, 100]]


def test_token_budget_cuts_batches_by_padded_length() -> None:
    runner = RecordingRunner()
    lengths = [10, 10, 10, 10, 50, 50]
    asyncio.run(with_batcher(runner, lambda b: b.run(lengths, lengths, group="v1"), max_batch_tokens=100))
    # 4 x 10 = 40 fits; 50s go two at a time (2 x 50 = 100) but never with the 10s (3 x 50 > 100)
    assert sorted(map(sorted, runner.batches)) == [[10, 10, 10, 10], [50, 50]]


def test_a_large_request_shares_batches_with_other_clients() -> None:
    runner = held_runner()

    async def scenario(batcher: MicroBatcher) -> None:
        first = await occupy_worker(batcher, runner)
        big = asyncio.create_task(batcher.run([1, 2, 3, 4, 5, 6], [1] * 6, group="v1"))
        small = asyncio.create_task(batcher.run([100], [1], group="v1"))
        await asyncio.sleep(0.05)
        runner.gate.set()
        await asyncio.gather(first, big, small)

    asyncio.run(with_batcher(runner, scenario))
    later = runner.batches[1:]
    assert [len(b) for b in later] == [4, 3]
    assert any(100 in batch and len(set(batch) & {1, 2, 3, 4, 5, 6}) > 0 for batch in later)


def test_items_of_different_groups_never_share_a_batch() -> None:
    runner = held_runner()

    async def scenario(batcher: MicroBatcher) -> tuple:
        first = await occupy_worker(batcher, runner, group="old")
        old = asyncio.create_task(batcher.run([1, 2], [1, 1], group="old"))
        new = asyncio.create_task(batcher.run([-1, -2], [1, 1], group="new"))
        await asyncio.sleep(0.05)
        runner.gate.set()
        return await asyncio.gather(first, old, new)

    _, old, new = asyncio.run(with_batcher(runner, scenario))
    assert (old, new) == ([2, 4], [-2, -4])
    assert sorted(map(sorted, runner.batches[1:])) == [[-2, -1], [1, 2]]


def test_cancelled_items_are_dropped_before_compute() -> None:
    runner = held_runner()

    async def scenario(batcher: MicroBatcher) -> list:
        first = await occupy_worker(batcher, runner)
        gone = asyncio.create_task(batcher.run([7, 8], [1, 1], group="v1"))
        stays = asyncio.create_task(batcher.run([9], [1], group="v1"))
        await asyncio.sleep(0.01)
        gone.cancel()
        runner.gate.set()
        await first
        return await stays

    assert asyncio.run(with_batcher(runner, scenario)) == [18]
    assert all(7 not in batch and 8 not in batch for batch in runner.batches)


def test_a_full_queue_refuses_whole_requests_at_once_with_retry_after() -> None:
    runner = held_runner()

    async def scenario(batcher: MicroBatcher) -> None:
        first = await occupy_worker(batcher, runner)
        queued = asyncio.create_task(batcher.run([1, 2, 3], [1, 1, 1], group="v1"))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            await batcher.run([4, 5], [1, 1], group="v1")  # 3 + 2 > 4: nothing of it is queued
        assert refused.value.retry_after == 1
        assert batcher.queue_depth == 3
        runner.gate.set()
        assert await batcher.run([6], [1], group="v1") == [12]  # room again once the queue drains
        await asyncio.gather(first, queued)

    asyncio.run(with_batcher(runner, scenario, queue_size=4))
    assert all(4 not in batch and 5 not in batch for batch in runner.batches)


def test_a_failing_batch_fails_only_its_items_and_the_worker_goes_on() -> None:
    def run_batch(payloads: list) -> list:
        if "poison" in payloads:
            raise ValueError("boom")
        return [p.upper() for p in payloads]

    async def scenario(batcher: MicroBatcher) -> None:
        with pytest.raises(InferenceError, match="boom"):
            await batcher.run(["poison"], [1], group="v1")
        assert await batcher.run(["ok"], [1], group="v1") == ["OK"]

    asyncio.run(with_batcher(run_batch, scenario))


def test_run_batch_returning_the_wrong_count_is_reported_with_a_fix() -> None:
    async def scenario(batcher: MicroBatcher) -> None:
        with pytest.raises(InferenceError, match="exactly one result per payload"):
            await batcher.run([1, 2], [1, 1], group="v1")

    asyncio.run(with_batcher(lambda payloads: payloads[:1], scenario))


def test_the_event_loop_keeps_accepting_while_a_batch_computes() -> None:
    runner = held_runner()

    async def scenario(batcher: MicroBatcher) -> int:
        first = await occupy_worker(batcher, runner)
        futures = [asyncio.create_task(batcher.run([i], [1], group="v1")) for i in range(1, 4)]
        await asyncio.sleep(0.01)
        depth_while_busy = batcher.queue_depth
        runner.gate.set()
        await asyncio.gather(first, *futures)
        return depth_while_busy

    assert asyncio.run(with_batcher(runner, scenario)) == 3


def test_the_next_batch_of_a_round_is_handed_over_before_the_running_one_ends() -> None:
    """The compute thread starts batch 2 straight after batch 1 even while the event loop is blocked,
    so it never idles waiting for a busy event loop; batch 3 is not handed over yet (at most two are),
    so a caller who leaves meanwhile still has its items dropped before compute."""
    release_first = threading.Event()
    second_started = threading.Event()
    calls: list[list] = []

    def run_batch(payloads: list) -> list:
        calls.append(list(payloads))
        if len(calls) == 1:
            release_first.wait(timeout=10)
        elif len(calls) == 2:
            second_started.set()
        return payloads

    async def scenario(batcher: MicroBatcher) -> bool:
        tasks = [asyncio.create_task(batcher.run([i] * 4, [1] * 4, group="v1")) for i in range(3)]
        while not calls:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # the worker hands over what it can while batch 1 runs
        tasks[2].cancel()  # batch 3's caller leaves
        await asyncio.sleep(0.01)  # the cancellation reaches its items
        release_first.set()
        started_while_loop_blocked = second_started.wait(timeout=10)  # blocks the event loop
        await asyncio.gather(*tasks[:2])
        return started_while_loop_blocked

    assert asyncio.run(with_batcher(run_batch, scenario, max_batch_size=4))
    assert calls == [[0] * 4, [1] * 4]


def test_stopping_fails_the_items_of_every_batch_of_the_round_not_finished() -> None:
    async def scenario(runner: RecordingRunner, compute: ComputePool) -> list:
        batcher = MicroBatcher(runner, policy(max_batch_size=2), compute=compute)
        batcher.start()
        tasks = [asyncio.create_task(batcher.run([i, i], [1, 1], group="v1")) for i in range(3)]
        await wait_entered(runner)
        await asyncio.sleep(0.05)  # batch 2 is with the compute thread behind batch 1; batch 3 is not
        await batcher.stop()
        return await asyncio.gather(*tasks, return_exceptions=True)

    with held_shared_compute() as (runner, compute):
        results = asyncio.run(asyncio.wait_for(scenario(runner, compute), timeout=20))
    assert len(results) == 3 and all(isinstance(r, NotReady) for r in results)  # nobody waits forever


def test_a_second_cancellation_of_the_worker_strands_nobody() -> None:
    """A shutdown that is itself interrupted (cancelled again mid-cleanup) still fails every item."""

    async def scenario(runner: RecordingRunner, compute: ComputePool) -> tuple[list, int]:
        batcher = MicroBatcher(runner, policy(max_batch_size=2), compute=compute)
        batcher.start()
        tasks = [asyncio.create_task(batcher.run([i, i], [1, 1], group="v1")) for i in range(4)]
        await wait_entered(runner)
        worker = batcher._worker
        worker.cancel()
        await asyncio.sleep(0)  # the worker starts its cleanup...
        worker.cancel()  # ...and is cancelled again
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=10)
        return results, batcher.backlog

    with held_shared_compute() as (runner, compute):
        results, backlog = asyncio.run(scenario(runner, compute))
    assert len(results) == 4 and all(isinstance(r, NotReady) for r in results)
    assert backlog == 0  # admission control does not count work that will never run


def test_batch_policy_refuses_useless_values() -> None:
    with pytest.raises(ValueError):
        BatchPolicy(max_batch_size=0)
    with pytest.raises(ValueError):
        BatchPolicy(max_wait_s=-1)


def test_a_batch_that_raises_is_split_until_only_the_items_at_fault_fail() -> None:
    calls: list[list[str]] = []

    def run_batch(payloads: list) -> list:
        calls.append(list(payloads))
        if "poison" in payloads:
            raise ValueError("boom")
        return [p.upper() for p in payloads]

    async def scenario(batcher: MicroBatcher) -> list:
        payloads = ["a", "b", "c", "poison", "d", "e", "f", "g"]
        futures = batcher.submit(payloads, [1] * len(payloads), group="v1")  # one batch of 8
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(with_batcher(run_batch, scenario, max_batch_size=8))
    assert results[:3] + results[4:] == ["A", "B", "C", "D", "E", "F", "G"]
    assert isinstance(results[3], InferenceError) and "boom" in results[3].message
    assert calls[0] == ["a", "b", "c", "poison", "d", "e", "f", "g"]  # they shared one batch first
    assert ["poison"] in calls and len(calls) <= 1 + 2 * 3  # halves, down to the item alone


def test_a_lone_request_is_computed_at_once_without_waiting_for_companions() -> None:
    async def scenario(batcher: MicroBatcher) -> list:
        return await asyncio.wait_for(batcher.run([1], [1], group="v1"), timeout=30)  # max_wait_s is 10 min

    assert asyncio.run(with_batcher(RecordingRunner(), scenario, max_wait_s=600)) == [2]


def test_the_worker_waits_for_announced_requests_and_takes_them_in_the_same_batch() -> None:
    runner = RecordingRunner()

    async def scenario(batcher: MicroBatcher) -> None:
        with batcher.incoming():  # another request is being tokenized
            first = asyncio.create_task(batcher.run([1], [1], group="v1"))
            await asyncio.sleep(0.05)
            assert not first.done()  # waits for the announced one (max_wait_s is 10 min)
            second = asyncio.create_task(batcher.run([2], [1], group="v1"))
            await asyncio.sleep(0)
        assert await asyncio.wait_for(asyncio.gather(first, second), timeout=30) == [[2], [4]]

    asyncio.run(with_batcher(runner, scenario, max_wait_s=600))
    assert runner.batches == [[1, 2]]


def test_the_queue_bound_counts_tokens_and_refuses_a_request_whole() -> None:
    runner = held_runner()

    async def scenario(batcher: MicroBatcher) -> None:
        first = await occupy_worker(batcher, runner)
        queued = batcher.submit([1, 2], [40, 40], group="v1")
        with pytest.raises(Overloaded, match="tokens pending"):
            batcher.submit([3], [30], group="v1")  # 80 + 30 > 100 tokens, though only 3 items
        assert batcher.queue_depth == 2
        runner.gate.set()
        assert await asyncio.gather(first, *queued) == [[0], 2, 4]

    asyncio.run(with_batcher(runner, scenario, max_queue_tokens=100))


def test_packed_items_keep_arrival_order_and_batches_count_real_tokens() -> None:
    runner = RecordingRunner()

    async def scenario(batcher: MicroBatcher) -> list:
        lengths = [1, 100, 2, 99, 3, 98, 4, 97]
        return await batcher.run(lengths, lengths, group="v1", packed=True)

    results = asyncio.run(with_batcher(runner, scenario, max_batch_tokens=200))
    assert results == [2, 200, 4, 198, 6, 196, 8, 194]
    # arrival order, cut where the sum of lengths would pass 200 (padded, 3 x 100 would already)
    assert runner.batches == [[1, 100, 2], [99, 3, 98], [4, 97]]


def test_a_long_packed_item_is_not_overtaken_by_shorter_ones_that_came_later() -> None:
    """Sorted by length, the long item would go last behind every later short one; packed, it keeps its
    place (padded items of the same arrival are sorted: the long one goes last)."""

    async def scenario(batcher: MicroBatcher, packed: bool) -> None:
        runner = batcher.run_batch
        first = await occupy_worker(batcher, runner)
        long = asyncio.create_task(batcher.run([50], [50], group="v1", packed=packed))
        await asyncio.sleep(0.01)
        short = [asyncio.create_task(batcher.run([i], [1], group="v1", packed=packed)) for i in range(8)]
        await asyncio.sleep(0.05)
        runner.gate.set()
        await asyncio.gather(first, long, *short)

    for packed, expected_batch in ((True, 1), (False, 3)):  # batches of 4: the long item first, or last
        runner = held_runner()
        asyncio.run(with_batcher(runner, functools.partial(scenario, packed=packed)))
        assert runner.batches[0] == [0]
        assert [50 in batch for batch in runner.batches].index(True) == expected_batch
