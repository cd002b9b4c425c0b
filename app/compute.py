"""The compute thread: one thread that runs every torch call of the service, one call after the other.

Loads, warm-ups and the batcher's forward passes all run on it. OpenMP keeps a thread team per calling
thread, and a second team on a small machine makes both spin-throttled (forward throughput 233 -> 157
items/s on 2 cores). Whoever builds the service owns it, hands it to the registry and the batcher, and
closes it last.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ComputeThread:
    def __init__(self, name: str = "torch"):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Await `fn(*args)` on the compute thread (after the calls queued there before it)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def close(self) -> None:
        """Wait for the call running there (a model load, a batch), then end the thread."""
        self.executor.shutdown(wait=True)
