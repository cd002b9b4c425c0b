"""The micro-batcher: one bounded queue for all clients -> batches within token budgets -> a worker thread.

It knows neither HTTP nor torch. Callers submit payloads with their exact length in tokens and a group key
(items of different groups, e.g. model versions, never share a batch); `run_batch(list[payload]) ->
list[result]` runs on a compute pool's workers (app/compute.py: its own, or the service's, shared with
model loading) so the event loop keeps accepting requests while the model computes.

When the worker is free and items are pending, it starts at once unless more are on their way (callers
announce requests they are still preparing with `incoming()`): then it waits at most `max_wait_s` after
the oldest pending item (less if a full batch is already there). A lone client so pays no batching wait.
It takes what is pending (oldest first, a few batches' worth) and cuts each group into batches by item
count and token budget. Padded inputs (batch x longest) are sorted by length first, so a batch holds
items of similar length and padding stays small. Packed inputs (a backend that packs them, as the CPU
path does) cost their real tokens whatever their companions: they keep arrival order, so short items
never overtake long ones and every item of a round waits about as long. A large request is split across
batches and shares them with others.
Every worker of the pool runs a batch of a round while one more waits in the pool's queue, so a worker
goes straight from one batch to the next; the next round is formed when a worker is free again (with one
worker: when the last batch of this one ends).
Items whose caller has gone (cancelled future) are dropped before compute. When `run_batch` raises, the
batch is split in halves and each is run again (on the same worker, at once), down to single items,
so that only the items at fault fail (with InferenceError) and the worker keeps running; on stop, every
item not computed fails with NotReady.

Admission counts work in tokens: a request is refused (Overloaded, before anything of it is queued) when
the queue holds `queue_size` items or `max_queue_tokens` tokens, or when the tokens accepted and not yet
computed would take longer than `max_queue_wait_s` at the measured throughput (tokens per second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from app.admission import FAST_REFUSAL, AdmissionPolicy
from app.compute import ComputePool
from app.config import Settings, batch_tokens, default_of
from app.errors import InferenceError, NotReady

log = logging.getLogger(__name__)

ROUND_BATCHES = 4  # batches' worth of pending items sorted together: enough to group lengths, still fair


@dataclass(frozen=True)
class BatchPolicy:
    """The batcher's bounds. Defaults: the Settings fields of the same names (app/config.py says what each
    means); the token budget is the auto one of a device type not known here (cuda's)."""

    max_batch_size: int = default_of("max_batch_size")  # items per batch
    max_batch_tokens: int = batch_tokens(default_of("max_batch_tokens"), "cuda")  # size x longest length
    max_wait_s: float = default_of("max_wait_ms") / 1000  # wait after the oldest pending item for more
    queue_size: int = default_of("queue_size")  # items pending at most; more are refused with Overloaded
    max_queue_tokens: int = default_of("max_queue_tokens")  # tokens pending at most; more are refused
    retry_after_s: int = default_of("retry_after_s")  # advertised to refused clients
    max_queue_wait_s: float = default_of("max_queue_wait_s")  # refuse work expected to wait longer (0 = off)

    @classmethod
    def from_settings(cls, settings: Settings, device_type: str) -> BatchPolicy:
        """The policy the service runs with on this device type (cpu or cuda)."""
        return cls(
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.batch_tokens_for(device_type),
            max_wait_s=settings.max_wait_ms / 1000,
            queue_size=settings.queue_size,
            max_queue_tokens=settings.max_queue_tokens,
            retry_after_s=settings.retry_after_s,
            max_queue_wait_s=settings.max_queue_wait_s,
        )

    def __post_init__(self) -> None:
        if min(self.max_batch_size, self.max_batch_tokens, self.queue_size, self.max_queue_tokens) < 1:
            raise ValueError(f"batch size, token budget and queue bounds must be >= 1: {self}")
        if self.max_wait_s < 0 or self.max_queue_wait_s < 0:
            raise ValueError(f"max_wait_s and max_queue_wait_s must be >= 0: {self}")


@dataclass
class WorkItem:
    payload: Any
    length: int  # tokens: the sort key and the unit of the batch budget and of admission
    group: Hashable
    future: asyncio.Future
    packed: bool = False  # its group's backend packs inputs: batches cost real tokens, not padded ones
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchReport:
    """What one batch did; handed to the `on_batch` observer (metrics)."""

    size: int
    padded_tokens: int  # size x longest length
    real_tokens: int  # sum of lengths
    queue_waits: list[float]  # seconds each item waited before compute
    run_seconds: float
    failed_items: int  # items that failed (alone: the others of the batch were computed)


def cut_payloads(
    payloads: Sequence[Any], lengths: Sequence[int], policy: BatchPolicy, packed: bool = False
) -> list[list[Any]]:
    """The batches `cut_batches` makes of these payloads of one group, pending together (benchmarks)."""
    items = [WorkItem(p, n, 0, None, packed) for p, n in zip(payloads, lengths, strict=True)]
    return [[item.payload for item in batch] for batch in cut_batches(items, policy)]


def cut_batches(items: Sequence[WorkItem], policy: BatchPolicy) -> list[list[WorkItem]]:
    """Group by `group` (first-seen order) and cut each within the size and token bounds (cut_group)."""
    groups: dict[Hashable, list[WorkItem]] = {}
    for item in items:
        groups.setdefault(item.group, []).append(item)
    return [batch for members in groups.values() for batch in cut_group(members, policy)]


def cut_group(members: Sequence[WorkItem], policy: BatchPolicy) -> list[list[WorkItem]]:
    """Contiguous runs within the size bound and the token budget. Padded inputs cost size x longest, so
    they are sorted by length first and items of similar length share a batch. Packed inputs (a backend
    that packs them) cost their real tokens whatever their companions: sorting would buy nothing and would
    only let short items overtake long ones, so they keep arrival order and every item waits about as
    long as the others."""
    packed = members[0].packed
    ordered = members if packed else sorted(members, key=lambda it: it.length)
    batches: list[list[WorkItem]] = []
    batch: list[WorkItem] = []
    tokens = longest = 0
    for item in ordered:
        length = max(item.length, 1)
        cost = tokens + length if packed else (len(batch) + 1) * max(longest, length)
        if batch and (len(batch) >= policy.max_batch_size or cost > policy.max_batch_tokens):
            batches.append(batch)
            batch, tokens, longest = [], 0, 0
        batch.append(item)
        tokens, longest = tokens + length, max(longest, length)
    batches.append(batch)
    return batches


class MicroBatcher:
    def __init__(
        self,
        run_batch: Callable[[list[Any]], list[Any]],
        policy: BatchPolicy,
        on_batch: Callable[[BatchReport], None] | None = None,
        compute: ComputePool | None = None,
    ):
        self.run_batch = run_batch
        self.policy = policy
        self.on_batch = on_batch
        self.tokens_per_s: float | None = None  # measured forward throughput (moving average), for admission
        self._in_round_tokens = 0  # tokens of the current round not computed (or dropped) yet
        self._queued_tokens = 0  # tokens of the items in _pending
        self._incoming = 0  # requests announced with incoming() and not submitted yet
        self._pending: deque[WorkItem] = deque()
        self._arrived = asyncio.Event()
        # batches run on a compute pool: given (shared with model loading) or our own (one worker)
        self._owns_compute = compute is None
        self._compute = compute or ComputePool(name="forward")
        self._worker: asyncio.Task | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop the worker after its current batch; items still queued fail with NotReady."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(NotReady("the service is shutting down", self.policy.retry_after_s))
        self._queued_tokens = 0
        if self._owns_compute:
            self._compute.close()

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Announce a request being prepared (tokenized) for submission: the worker waits for it (at most
        `max_wait_s`) instead of starting a batch without it."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1
            self._arrived.set()  # submitted or given up: the worker need not wait for it any longer

    def submit(
        self,
        payloads: Sequence[Any],
        lengths: Sequence[int],
        group: Hashable,
        admission: AdmissionPolicy = FAST_REFUSAL,
        packed: bool = False,
    ) -> list[asyncio.Future]:
        """Queue all payloads or none: Overloaded when they do not fit, so a request is never half-queued.
        `packed`: the group's backend packs its inputs (RewardBackend.packs_inputs); the same for every
        submission of a group."""
        if not self._fits(lengths):
            self._drop_abandoned()
        if not self._fits(lengths):
            raise admission.overload_error(
                f"queue full ({len(self._pending)} of {self.policy.queue_size} items, "
                f"{self._queued_tokens} of {self.policy.max_queue_tokens} tokens pending); retry later",
                retry_after=self.policy.retry_after_s,
            )
        self.check_admission(admission)
        loop = asyncio.get_running_loop()
        items = [
            WorkItem(p, n, group, loop.create_future(), packed)
            for p, n in zip(payloads, lengths, strict=True)
        ]
        self._pending.extend(items)
        self._queued_tokens += sum(lengths)
        self._arrived.set()
        return [item.future for item in items]

    async def run(
        self,
        payloads: Sequence[Any],
        lengths: Sequence[int],
        group: Hashable,
        admission: AdmissionPolicy = FAST_REFUSAL,
        packed: bool = False,
    ) -> list[Any]:
        """Submit and await every result, in input order. If the caller goes away, its items are dropped."""
        futures = self.submit(payloads, lengths, group, admission, packed)
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def _fits(self, lengths: Sequence[int]) -> bool:
        return (
            len(self._pending) + len(lengths) <= self.policy.queue_size
            and self._queued_tokens + sum(lengths) <= self.policy.max_queue_tokens
        )

    @property
    def backlog(self) -> int:
        """Tokens accepted and not computed yet: queued, or in the round being computed."""
        return self._queued_tokens + self._in_round_tokens

    def expected_wait_s(self) -> float:
        """Seconds until the work queued now is computed (a new item's wait); 0 before any measurement."""
        if not self.tokens_per_s:
            return 0.0
        return self.backlog / self.tokens_per_s

    def check_admission(self, admission: AdmissionPolicy = FAST_REFUSAL) -> None:
        """Refuse (with the admission's error) when new work would wait longer than its queue-wait limit:
        callers ask before they spend anything on a request (tokenization), and submit asks again."""
        # a count bound alone lets a slow model queue minutes of work: bound the wait itself. A request's
        # own items do not count, so an idle server admits any request within max_items.
        wait = self.expected_wait_s()
        limit = admission.max_queue_wait_s
        if limit is None:
            limit = self.policy.max_queue_wait_s
        if limit and wait > limit:
            raise admission.overload_error(
                f"expected queue wait {wait:.1f} s exceeds max_queue_wait_s {limit:g} s; retry later",
                retry_after=self.policy.retry_after_s,
            )

    def _drop_abandoned(self) -> None:
        self._pending = deque(item for item in self._pending if not item.future.done())
        self._queued_tokens = sum(item.length for item in self._pending)

    async def _work(self) -> None:
        """Form rounds and hand their batches to the compute pool, up to `workers + 1` at once (the one
        beyond the workers waits in the pool's queue, so a worker goes straight from one batch to the next
        instead of idling until the event loop hands it more). A round ends when its last batch is handed
        over and a worker is free (with one worker: when its last batch ends); the next is formed from
        what is pending then."""
        running: dict[asyncio.Task, list[WorkItem]] = {}  # batches handed over, by their task
        not_yet: list[list[WorkItem]] = []
        try:
            while True:
                await self._wait_for_batch()
                workers = self._compute.active_workers
                round_items = self._take_round()
                self._in_round_tokens += sum(item.length for item in round_items)
                not_yet = cut_batches(round_items, self.policy)
                while not_yet:
                    await self._until_fewer(running, workers + 1)
                    handing: list[list[WorkItem]] = []
                    while not_yet and len(running) + len(handing) <= workers:
                        batch = not_yet.pop(0)
                        live = [item for item in batch if not item.future.done()]  # callers gone: dropped
                        self._in_round_tokens -= sum(it.length for it in batch if it.future.done())
                        if live:
                            handing.append(live)
                    # handed over together, so that the pool sees them together (a batch it takes
                    # alone runs on every thread, and no other starts beside it)
                    for live, job in zip(handing, self._hand_over(handing), strict=True):
                        running[asyncio.create_task(self._run(live, job))] = live
                await self._until_fewer(running, workers)
        finally:
            # Stopping (or a bug): nobody may wait forever. Items of batches never handed over fail now,
            # before any await, so that a second cancellation cannot skip it; so do those of batches
            # cancelled, possibly before they ever ran (_resolve skips futures already resolved).
            self._fail_stranded(not_yet)
            for task in running:
                task.cancel()
            try:
                await asyncio.gather(*running, return_exceptions=True)
            finally:
                self._fail_stranded(running.values())
                self._in_round_tokens = 0

    def _fail_stranded(self, batches: Iterable[list[WorkItem]]) -> None:
        for batch in batches:
            stopping = NotReady("the service is shutting down", self.policy.retry_after_s)
            self._resolve(batch, [stopping] * len(batch))

    @staticmethod
    async def _until_fewer(running: dict[asyncio.Task, list[WorkItem]], limit: int) -> None:
        """Wait until fewer than `limit` of `running` are running (forgetting those done). Bookkeeping
        errors are logged."""
        while True:
            for task in [task for task in running if task.done()]:
                del running[task]
                if not task.cancelled() and task.exception() is not None:
                    log.error("batch bookkeeping failed", exc_info=task.exception())
            if len(running) < limit:
                return
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)

    async def _wait_for_batch(self) -> None:
        """Return once items are pending and no more are on their way, a full batch is there, or the
        oldest waited `max_wait_s`."""
        while True:
            self._drop_abandoned()
            if self._pending and (not self._incoming or len(self._pending) >= self.policy.max_batch_size):
                return
            if self._pending:
                timeout = self._pending[0].enqueued + self.policy.max_wait_s - time.monotonic()
                if timeout <= 0:
                    return
            else:
                timeout = None
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):  # not the builtin one before Python 3.11
                await asyncio.wait_for(self._arrived.wait(), timeout)

    def _take_round(self) -> list[WorkItem]:
        count = min(len(self._pending), self.policy.max_batch_size * ROUND_BATCHES)
        taken = [self._pending.popleft() for _ in range(count)]
        self._queued_tokens -= sum(item.length for item in taken)
        return taken

    def _hand_over(self, batches: list[list[WorkItem]]) -> list[Future | Exception]:
        """Queue `batches` on the compute pool at once -> each one's job (or why it could not be queued)."""
        try:
            return self._compute.submit_batches(self._call, [[it.payload for it in b] for b in batches])
        except Exception as exc:  # a closed pool: those batches fail, the worker goes on
            return [exc] * len(batches)

    async def _run(self, batch: list[WorkItem], job: Future | Exception) -> None:
        # started/finished: when a worker took and finished the batch, so that waiting for a worker
        # thread (behind a model load) counts as queueing and the event loop's delay in picking up the
        # result counts as neither. Cancelled (on stop): _work fails the batch's items.
        started = time.monotonic()
        try:
            if isinstance(job, Exception):
                raise job
            results, started, finished, scale = await asyncio.wrap_future(job)
        except Exception as exc:  # a broken run_batch (wrong result count) fails this batch only
            log.exception("batch of %d items failed", len(batch))
            results = [InferenceError(f"inference failed for this batch: {exc}")] * len(batch)
            finished, scale = time.monotonic(), 1.0
        tokens = sum(item.length for item in batch)
        self._in_round_tokens -= tokens
        self._resolve(batch, results)
        failed_items = sum(isinstance(result, Exception) for result in results)
        if not failed_items:  # a batch split to isolate a failure is no measure of throughput
            self._measure_throughput(tokens * scale, finished - started)
        self._report(batch, started, finished, failed_items)

    def _measure_throughput(self, tokens: int, seconds: float) -> None:
        """`tokens` computed in `seconds` (a batch's, scaled to the whole pool's threads)."""
        rate = tokens / max(seconds, 1e-6)
        self.tokens_per_s = rate if self.tokens_per_s is None else 0.8 * self.tokens_per_s + 0.2 * rate

    def _call(self, payloads: list[Any]) -> tuple[list[Any], float, float, float]:
        """run_batch on a worker -> (results, when it started there, when it finished, the pool's threads
        over the batch's: a batch on half of them stands for half of what the pool computes meanwhile)."""
        started = time.monotonic()
        results = self._run_isolating(payloads)
        return results, started, time.monotonic(), 1 / self._compute.machine_share()

    def _run_isolating(self, payloads: list[Any]) -> list[Any]:
        """run_batch; when it raises, each half is run again, down to single items, so that only the
        items at fault fail (a batch with one bad item of n costs about 2 log2(n) extra smaller runs)."""
        try:
            results = self.run_batch(payloads)
        except Exception as exc:
            if len(payloads) == 1:
                log.warning("an item failed alone: %s", exc)
                return [InferenceError(f"inference failed for this item: {exc}")]
            log.warning(
                "a batch of %d items failed (%s); splitting it to isolate the failure", len(payloads), exc
            )
            half = len(payloads) // 2
            return self._run_isolating(payloads[:half]) + self._run_isolating(payloads[half:])
        if len(results) != len(payloads):
            raise RuntimeError(
                f"run_batch returned {len(results)} results for {len(payloads)} payloads; "
                "it must return exactly one result per payload, in order"
            )
        return results

    @staticmethod
    def _resolve(batch: list[WorkItem], results: list[Any]) -> None:
        for item, result in zip(batch, results, strict=True):
            if item.future.done():  # the caller left while we computed
                continue
            if isinstance(result, Exception):  # run_batch may fail single items
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    def _report(self, batch: list[WorkItem], started: float, finished: float, failed_items: int) -> None:
        if self.on_batch is None:
            return
        longest = max(item.length for item in batch)
        self.on_batch(
            BatchReport(
                size=len(batch),
                padded_tokens=len(batch) * longest,
                real_tokens=sum(item.length for item in batch),
                queue_waits=[started - item.enqueued for item in batch],
                run_seconds=finished - started,
                failed_items=failed_items,
            )
        )
