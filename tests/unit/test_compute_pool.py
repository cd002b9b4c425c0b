"""The compute pool runs every torch call of the service: model loads alone on its first worker with all
the threads, batches side by side on its workers with their share (a lone batch with all of them); and
the CPU batch token budget and worker count are sized per device unless set."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from app.batcher import BatchPolicy, MicroBatcher
from app.compute import ComputePool
from app.config import AUTO_BATCH_TOKENS, Settings
from app.errors import NotReady
from app.registry import ModelRegistry


def test_with_one_worker_batches_and_model_loads_share_the_service_compute_thread(tmp_path: Path) -> None:
    compute = ComputePool()
    registry = ModelRegistry(tmp_path, device="cpu", compute=compute)

    async def scenario() -> tuple[set[int], int]:
        batcher = MicroBatcher(
            lambda items: [threading.get_ident()] * len(items), BatchPolicy(), compute=compute
        )
        batcher.start()
        try:
            batch_threads = set(await batcher.run([1, 2, 3], [1, 1, 1], group="v"))
            load_thread = await registry.compute.run(threading.get_ident)
        finally:
            await batcher.stop()
        return batch_threads, load_thread

    batch_threads, load_thread = asyncio.run(scenario())
    assert batch_threads == {load_thread} and load_thread != threading.get_ident()
    registry.close()  # the registry does not own the thread it was given
    assert compute.submit(threading.get_ident).result() == load_thread  # outlives batcher, registry
    compute.close()


def test_the_token_budget_is_sized_per_device_unless_set() -> None:
    assert BatchPolicy.from_settings(Settings(), "cpu").max_batch_tokens == AUTO_BATCH_TOKENS["cpu"] == 2048
    assert BatchPolicy.from_settings(Settings(), "cuda").max_batch_tokens == AUTO_BATCH_TOKENS["cuda"]
    assert BatchPolicy.from_settings(Settings(max_batch_tokens=500), "cpu").max_batch_tokens == 500


def test_the_worker_count_is_two_on_a_multi_core_cpu_unless_set() -> None:
    assert Settings(torch_threads=2).compute_workers_for("cpu") == 2
    assert Settings(torch_threads=16).compute_workers_for("cpu") == 2
    assert Settings(torch_threads=1).compute_workers_for("cpu") == 1
    assert Settings(torch_threads=8).compute_workers_for("cuda") == 1
    assert Settings(torch_threads=8, compute_workers=4).compute_workers_for("cpu") == 4


class ThreadCounts:
    """A `set_threads` that records, per worker thread, the intra-op thread count it was given."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.calls: list[tuple[str, int]] = []

    def __call__(self, threads: int) -> None:
        self.local.threads = threads
        self.calls.append((threading.current_thread().name, threads))

    def where(self) -> tuple[str, int]:
        """(worker name, its thread count): what a job sees."""
        return threading.current_thread().name, getattr(self.local, "threads", 0)


def held_job(counts: ThreadCounts, gate: threading.Event, entered: threading.Event):
    def job() -> tuple[str, int]:
        entered.set()
        assert gate.wait(timeout=10)
        return counts.where()

    return job


async def run_batch(pool: ComputePool, fn):
    """Await `fn()` queued on `pool` as a batch."""
    return await asyncio.wrap_future(pool.submit(fn, exclusive=False))


@pytest.fixture
def pool():
    counts = ThreadCounts()
    compute = ComputePool(workers=2, threads=4, set_threads=counts, name="t")
    compute.counts = counts
    yield compute
    compute.close()


def test_a_lone_batch_gets_every_thread_and_no_batch_starts_beside_it(pool) -> None:
    counts = pool.counts

    async def scenario():
        alone = await run_batch(pool, counts.where)
        gate, entered = threading.Event(), threading.Event()
        first = asyncio.ensure_future(run_batch(pool, held_job(counts, gate, entered)))
        await asyncio.to_thread(entered.wait, 10)
        second = asyncio.ensure_future(run_batch(pool, counts.where))
        await asyncio.sleep(0.1)
        started_beside = second.done()  # more threads than cores: it must wait for the first
        gate.set()
        return alone, await first, started_beside, await second

    alone, first, started_beside, second = asyncio.run(scenario())
    assert alone == ("t_0", 4) and first == ("t_0", 4)
    assert not started_beside and second == ("t_0", 4)  # then alone in turn


def test_batches_handed_over_together_run_side_by_side_with_their_share() -> None:
    counts = ThreadCounts()
    pool = ComputePool(workers=2, threads=3, set_threads=counts)
    both_in = threading.Barrier(2, timeout=10)  # neither returns unless the other runs at the same time

    def job(_) -> tuple[str, int, float]:
        both_in.wait()
        return (*counts.where(), pool.machine_share())

    try:
        results = [future.result(timeout=20) for future in pool.submit_batches(job, [1, 2])]
    finally:
        pool.close()
    # the first worker also takes the thread the other's share leaves; each stands for its share
    assert sorted(results) == [("torch_0", 2, 2 / 3), ("torch_1", 1, 1 / 3)]


def test_a_call_waits_for_running_batches_and_no_batch_starts_during_it(pool) -> None:
    counts = pool.counts
    log: list[str] = []

    def batch(name: str, hold: float = 0.0):
        def job() -> tuple[str, int]:
            log.append(f"{name} start")
            time.sleep(hold)
            log.append(f"{name} end")
            return counts.where()

        return job

    async def scenario():
        running = asyncio.ensure_future(run_batch(pool, batch("b1", 0.2)))
        await asyncio.sleep(0.05)
        call = asyncio.ensure_future(pool.run(batch("load", 0.2)))
        await asyncio.sleep(0.05)
        after = asyncio.ensure_future(run_batch(pool, batch("b2")))  # queued behind the call
        return await asyncio.gather(running, call, after)

    _, load, _ = asyncio.run(scenario())
    assert log == ["b1 start", "b1 end", "load start", "load end", "b2 start", "b2 end"]
    assert load == ("t_0", 4)  # alone, with every thread


def test_an_error_reaches_its_caller_and_a_cancelled_job_never_runs(pool) -> None:
    ran: list[str] = []

    def fail() -> None:
        raise ValueError("broken batch")

    async def scenario():
        with pytest.raises(ValueError, match="broken batch"):
            await run_batch(pool, fail)
        gate, entered = threading.Event(), threading.Event()
        held = [asyncio.ensure_future(pool.run(held_job(pool.counts, gate, entered)))]
        await asyncio.to_thread(entered.wait, 10)
        queued = asyncio.ensure_future(run_batch(pool, lambda: ran.append("cancelled one")))
        await asyncio.sleep(0.01)
        queued.cancel()
        gate.set()
        await held[0]
        return await run_batch(pool, lambda: ran.append("next") or "ok")

    assert asyncio.run(scenario()) == "ok"
    assert ran == ["next"]


def test_closing_runs_what_is_queued_then_refuses_more() -> None:
    pool = ComputePool(workers=2, threads=2)
    futures = [pool.submit(time.sleep, 0.05, exclusive=False) for _ in range(5)]
    pool.close()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(RuntimeError):
        pool.submit(time.sleep, 0)
    assert not any(thread.is_alive() for thread in pool._threads)


def test_the_batcher_keeps_every_worker_busy_and_stopping_fails_what_is_left() -> None:
    pool = ComputePool(workers=2, threads=2)
    both_in = threading.Barrier(2, timeout=10)
    seen: list[list[int]] = []
    gate = threading.Event()

    def run_batch(payloads: list[int]) -> list[int]:
        seen.append(list(payloads))
        if len(seen) <= 2:
            both_in.wait()  # the first two batches run side by side, or this raises
        else:
            gate.wait(timeout=10)
        return [p * 2 for p in payloads]

    async def scenario():
        batcher = MicroBatcher(run_batch, BatchPolicy(max_batch_size=2, max_wait_s=0.01), compute=pool)
        batcher.start()
        first = await asyncio.gather(*(batcher.run([i, i], [1, 1], group="v") for i in range(2)))
        held = [asyncio.create_task(batcher.run([i, i], [1, 1], group="v")) for i in range(10, 14)]
        while len(seen) < 4:  # two more batches running, the rest queued or not handed over yet
            await asyncio.sleep(0.01)
        await batcher.stop()
        gate.set()
        return first, await asyncio.gather(*held, return_exceptions=True), batcher.backlog

    try:
        first, held, backlog = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    finally:
        gate.set()
        pool.close()
    assert first == [[0, 0], [2, 2]]
    assert all(isinstance(result, NotReady) for result in held) and backlog == 0


def test_side_by_side_is_kept_when_it_is_measured_faster() -> None:
    pool = ComputePool(workers=2, threads=2)

    def forward(batch: list[int]) -> None:
        time.sleep(0.002 * len(batch))  # releases the GIL: two at once take the time of one

    try:
        layout = asyncio.run(pool.measure_layout(forward, [[1] * 10, [1] * 10]))
    finally:
        pool.close()
    assert layout["measured"] and layout["side_by_side"] and pool.active_workers == 2
    assert layout["side_by_side_items_per_s"] > 1.5 * layout["one_at_a_time_items_per_s"]


def test_batches_run_one_at_a_time_when_side_by_side_is_measured_slower() -> None:
    counts = ThreadCounts()
    pool = ComputePool(workers=2, threads=2, set_threads=counts)
    one_at_a_time = threading.Lock()

    def forward(batch: list[int]) -> None:
        # what two forward passes fighting over the same cores look like: each waits for the other, and
        # one on a share of the threads is slower than one on all of them
        with one_at_a_time:
            time.sleep(0.002 * len(batch) * (1 if pool.machine_share() == 1 else 1.5))

    async def scenario() -> tuple[dict, set[tuple[str, int]]]:
        layout = await pool.measure_layout(forward, [[1] * 10, [1] * 10])
        jobs = pool.submit_batches(lambda _: counts.where(), list(range(8)))
        return layout, set(await asyncio.gather(*map(asyncio.wrap_future, jobs)))

    try:
        layout, workers_used = asyncio.run(scenario())
    finally:
        pool.close()
    assert layout["measured"] and not layout["side_by_side"] and pool.active_workers == 1
    assert workers_used == {("torch_0", 2)}  # the other worker stays idle; batches get every thread


def test_a_forced_worker_count_is_not_measured() -> None:
    pool = ComputePool(workers=2, threads=2, measured=False)
    try:
        layout = asyncio.run(pool.measure_layout(lambda batch: None, [[1], [1]]))
    finally:
        pool.close()
    assert layout["setting"] == "forced" and not layout["measured"] and pool.active_workers == 2


def test_closing_from_a_job_does_not_wait_for_itself() -> None:
    pool = ComputePool(workers=2, threads=2)
    ran: list[int] = []
    gate = threading.Event()

    def close_from_a_job() -> None:
        assert gate.wait(timeout=10)
        pool.close()

    closer = pool.submit(close_from_a_job)
    later = [pool.submit(ran.append, i, exclusive=False) for i in range(3)]
    gate.set()
    assert closer.result(timeout=10) is None  # returned instead of joining the workers
    for future in later:  # queued before the close: still run
        future.result(timeout=10)
    assert ran == [0, 1, 2]
    for thread in pool._threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in pool._threads)
