"""All torch work of the service happens on one thread (OpenMP keeps a thread team per calling thread),
and the CPU batch token budget is sized for CPU throughput unless set."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from app.batcher import BatchPolicy, MicroBatcher
from app.compute import ComputeThread
from app.config import AUTO_BATCH_TOKENS, Settings
from app.registry import ModelRegistry


def test_batches_and_model_loads_share_the_service_compute_thread(tmp_path: Path) -> None:
    compute = ComputeThread()
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
    assert compute.executor.submit(threading.get_ident).result() == load_thread  # outlives batcher, registry
    compute.close()


def test_the_token_budget_is_sized_per_device_unless_set() -> None:
    assert BatchPolicy.from_settings(Settings(), "cpu").max_batch_tokens == AUTO_BATCH_TOKENS["cpu"] == 2048
    assert BatchPolicy.from_settings(Settings(), "cuda").max_batch_tokens == AUTO_BATCH_TOKENS["cuda"]
    assert BatchPolicy.from_settings(Settings(max_batch_tokens=500), "cpu").max_batch_tokens == 500
