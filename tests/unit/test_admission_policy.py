"""Per-call admission: a caller that cannot back off waits longer in the queue and is refused with the error
it retries; others keep the fast refusal of the batcher's own policy."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.admission import AdmissionPolicy
from app.batcher import BatchPolicy, MicroBatcher
from app.errors import Overloaded, ServerBusy

PATIENT = AdmissionPolicy(max_queue_wait_s=60.0, overload_error=ServerBusy)


def slow_model(payloads: list[int]) -> list[int]:
    time.sleep(0.01 * len(payloads))  # about 100 items/s
    return list(payloads)


async def busy_batcher(queue_size: int = 10_000) -> tuple[MicroBatcher, list[asyncio.Future]]:
    """A batcher that measured its throughput and has about 0.3 s of work queued (limit: 0.2 s)."""
    policy = BatchPolicy(max_batch_size=4, max_wait_s=0.0, queue_size=queue_size, max_queue_wait_s=0.2)
    batcher = MicroBatcher(slow_model, policy)
    batcher.start()
    await batcher.run([1, 2, 3, 4], [1] * 4, group=0)
    return batcher, batcher.submit(list(range(30)), [1] * 30, group=0)


def test_a_patient_caller_is_queued_where_the_default_refuses_fast() -> None:
    async def scenario() -> None:
        batcher, backlog = await busy_batcher()
        try:
            with pytest.raises(Overloaded) as refused:
                batcher.submit([99], [1], group=0)
            assert type(refused.value) is Overloaded
            assert await batcher.run([7], [1], group=0, admission=PATIENT) == [7]
            await asyncio.gather(*backlog)
        finally:
            await batcher.stop()

    asyncio.run(scenario())


def test_a_patient_caller_is_refused_with_its_own_error_beyond_its_deadline() -> None:
    async def scenario() -> None:
        batcher, backlog = await busy_batcher(queue_size=32)
        try:
            with pytest.raises(ServerBusy, match="queue full") as full:
                batcher.submit([1, 2, 3], [1] * 3, group=0, admission=PATIENT)
            assert full.value.retry_after == 1
            short = AdmissionPolicy(max_queue_wait_s=0.05, overload_error=ServerBusy)
            with pytest.raises(ServerBusy, match="expected queue wait"):
                batcher.submit([1], [1], group=0, admission=short)
            await asyncio.gather(*backlog)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
