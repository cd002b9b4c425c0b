"""The compute pool: the threads that run every torch call of the service.

- **Calls** (`run`): model loads, warm-ups, anything that must have the machine to itself. A call waits
  until no batch runs, runs on the first worker with all the threads, and no batch starts until it ends.
- **Batches** (`run_batch`): the batcher's forward passes. The first worker takes the next batch when it
  is free, another worker when it is not. A batch that runs alone (no other batch running or waiting)
  runs on the first worker with all the threads, so a lone client gets the whole machine, and no other
  batch starts beside it; batches that run together get their share each (`threads // workers`, the
  first worker also what the shares leave). The batcher hands a round's batches over together
  (`submit_batches`), so the pool sees them together.

Why more than one worker on a CPU: a forward pass on two OpenMP threads waits for both at every barrier,
so each time the scheduler preempts one of them for the HTTP side's work (event loop, tokenizer threads,
clients on the same host), the other spins idle until it is back, and every millisecond of HTTP work
costs the forward pass about two. Two batches on one thread each have no barrier to wait at: served
`/score` at 64 clients rose by a median 21% on 2 vCPUs (docs/benchmarks.md, "Forward passes side by side").

Whether side by side pays is measured, not assumed (`measure_layout`, on the first version loaded, before
it serves): the canary batches one at a time with every thread against the same side by side; the pool
keeps its other workers idle when side by side is slower by more than LAYOUT_FLOOR allows. The bar is
"not slower", not "faster": in process, without the HTTP side's preemptions, the canary shows only part
of the gain side by side brings to a serving process (its ratio was 0.85-1.24 across restarts, on
batches of 16, while served comparisons favoured side by side in nine pairs of ten, docs/benchmarks.md).

Only the first worker ever uses more than its share of threads, and no other worker starts a batch
while it does, so the threads at work never outnumber `threads`; with two threads, at most one OpenMP
team exists (with a team per calling thread on a small machine, libgomp throttles their spin-waiting
and forwards ran 1.9x slower). Whoever builds the service owns the pool, hands it to the registry and
the batcher, and closes it last.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

LAYOUT_ROUNDS = 5  # timed passes of each layout, taken in turn; the median of the rounds' ratios counts
LAYOUT_FLOOR = 0.95  # side by side is kept when that ratio (side by side / one at a time) is at least this


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple
    exclusive: bool  # a call (run): alone on the first worker, with all the threads
    future: Future = field(default_factory=Future)


class ComputePool:
    def __init__(
        self,
        workers: int = 1,
        threads: int = 1,
        set_threads: Callable[[int], None] | None = None,
        name: str = "torch",
        measured: bool = True,
    ):
        """`workers` threads; `set_threads(n)` sets the calling thread's intra-op threads (torch's), called
        on a worker before a job that needs another count than its last one; `threads` in all. With
        `measured` False (a setting forced the worker count), batches run side by side unmeasured."""
        if workers < 1 or threads < 1:
            raise ValueError(f"workers and threads must be >= 1, not {workers} and {threads}")
        self.workers = workers
        self.threads = threads
        self.threads_per_worker = max(1, threads // workers)
        # side by side: the first worker also takes what the others' shares leave (3 threads: 2 + 1)
        self._shares = [max(1, threads - self.threads_per_worker * (workers - 1))] + [
            self.threads_per_worker
        ] * (workers - 1)
        self._local = threading.local()  # the thread count of the job a worker is running
        self._set_threads = set_threads
        self.side_by_side = workers > 1  # False: the other workers stay idle (measure_layout)
        self.setting = "auto" if measured else "forced"
        self._timings: dict = {}  # measure_layout's figures
        self._jobs: deque[_Job] = deque()
        self._busy = [False] * workers
        self._full = False  # the first worker runs a job with every thread: nobody else starts one
        self._exclusive_running = False
        self._closing = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._serve, args=(index,), name=f"{name}_{index}", daemon=True)
            for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Await `fn(*args)` alone on the first worker with all the threads, after the jobs queued before
        it; no batch runs meanwhile."""
        return await asyncio.wrap_future(self.submit(fn, *args, exclusive=True))

    @property
    def layout(self) -> dict:
        """The workers, whether batches run side by side, and how that was decided (/v1/model)."""
        return {
            "workers": self.workers, "side_by_side": self.side_by_side, "setting": self.setting,
            "measured": bool(self._timings), **self._timings,
        }  # fmt: skip

    def one_at_a_time(self) -> None:
        """Run batches one at a time on the first worker from now on, with every thread."""
        self.side_by_side = False

    @property
    def active_workers(self) -> int:
        """Workers that take batches: all of them side by side, else the first only."""
        return self.workers if self.side_by_side else 1

    async def measure_layout(self, forward: Callable[[list], Any], batches: list[list]) -> dict:
        """Time `forward` over `batches` one at a time with every thread and side by side on the workers,
        in turn LAYOUT_ROUNDS times; keep side by side only if the median of the rounds' ratios (each
        taken within a round, so that a slow spell of a shared machine hits both layouts) reaches
        LAYOUT_FLOOR. Run it while nothing else uses the pool (its figures are the pool's alone)."""
        if self.workers == 1 or self.setting != "auto":
            return self.layout
        items = sum(map(len, batches))
        alone: list[float] = []
        side: list[float] = []
        await self.run(run_each, forward, batches)  # untimed: every worker's threads awake
        await asyncio.gather(*map(asyncio.wrap_future, self.submit_batches(forward, batches)))
        for _ in range(LAYOUT_ROUNDS):
            started = time.perf_counter()
            await self.run(run_each, forward, batches)
            alone.append(items / (time.perf_counter() - started))
            started = time.perf_counter()
            await asyncio.gather(*map(asyncio.wrap_future, self.submit_batches(forward, batches)))
            side.append(items / (time.perf_counter() - started))
        one_rate, side_rate = statistics.median(alone), statistics.median(side)
        ratio = statistics.median(s / a for s, a in zip(side, alone, strict=True))
        self.side_by_side = ratio >= LAYOUT_FLOOR
        self._timings = {
            "one_at_a_time_items_per_s": round(one_rate, 1), "side_by_side_items_per_s": round(side_rate, 1),
            "side_by_side_ratio": round(ratio, 3),
        }  # fmt: skip
        return self.layout

    def submit_batches(self, fn: Callable[..., T], args: list) -> list[Future]:
        """Queue `fn(a)` for each of `args` as batches, all at once (no worker takes one alone)."""
        return self._enqueue([_Job(fn, (one,), exclusive=False) for one in args])

    def submit(self, fn: Callable[..., T], *args: object, exclusive: bool = True) -> Future:
        """Queue `fn(*args)` (a call when `exclusive`, else a batch) -> its concurrent future."""
        return self._enqueue([_Job(fn, args, exclusive)])[0]

    def _enqueue(self, jobs: list[_Job]) -> list[Future]:
        with self._cond:
            if self._closing:
                raise RuntimeError("the compute pool is closed")
            self._jobs.extend(jobs)
            self._cond.notify_all()
        return [job.future for job in jobs]

    def close(self) -> None:
        """Run what is queued, then end the workers (waits for them, unless called from a job)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if threading.current_thread() in self._threads:
            return  # from a job: the workers end once the queue is drained, without waiting here
        for thread in self._threads:
            thread.join()

    def machine_share(self) -> float:
        """The share of the pool's threads the calling worker's job runs with (1.0 off the workers)."""
        return getattr(self._local, "threads", self.threads) / self.threads

    def _may_take(self, index: int) -> bool:
        """Whether worker `index` may take the job at the head of the queue now (lock held)."""
        if not self._jobs or self._exclusive_running:
            return False
        if self._jobs[0].exclusive:  # a call waits for every batch to end, on the first worker
            return index == 0 and not any(self._busy)
        if index == 0:  # the first worker takes batches first
            return True
        # the others only beside a first worker that runs on its share (never beside one with every
        # thread: that would put more threads than cores to work)
        return self.side_by_side and self._busy[0] and not self._full

    def _take(self, index: int) -> tuple[_Job, int] | None:
        """Wait for a job worker `index` may take -> (the job, its thread count); None once closed."""
        with self._cond:
            while not self._may_take(index):
                if self._closing and not self._jobs:
                    return None
                self._cond.wait()
            job = self._jobs.popleft()
            self._busy[index] = True
            self._exclusive_running = job.exclusive
            if self._jobs:  # the next job may now go to another worker: let them look
                self._cond.notify_all()
            others_idle = not any(busy for i, busy in enumerate(self._busy) if i != index)
            alone = job.exclusive or not self.side_by_side or (not self._jobs and others_idle)
            threads = self.threads if index == 0 and alone else self._shares[index]
            self._full = index == 0 and threads == self.threads and self.workers > 1
            return job, threads

    def _serve(self, index: int) -> None:
        current_threads = None
        while (taken := self._take(index)) is not None:
            job, threads = taken
            self._local.threads = threads
            try:
                if job.future.set_running_or_notify_cancel():  # False: its caller cancelled it
                    try:
                        if threads != current_threads and self._set_threads is not None:
                            self._set_threads(threads)
                            current_threads = threads
                        result = job.fn(*job.args)
                    except BaseException as exc:  # the caller gets it; the worker goes on
                        job.future.set_exception(exc)
                    else:
                        job.future.set_result(result)
            finally:
                with self._cond:
                    self._busy[index] = False
                    if job.exclusive:
                        self._exclusive_running = False
                    if index == 0:
                        self._full = False
                    self._cond.notify_all()


def run_each(forward: Callable[[list], Any], batches: list[list]) -> None:
    for batch in batches:
        forward(batch)
