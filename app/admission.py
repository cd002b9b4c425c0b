"""Admission: what a request goes through before it is queued, and how a busy server admits it.

- `AdmissionPolicy`, per call: how long its work may expect to wait in the queue and which error refuses
  it (the batcher applies it; callers that cannot back off are held longer and refused with an error they
  retry);
- `Admission`, per request: exact token ids and the heuristic of every item, on a few dedicated tokenizer
  threads (never the event loop, never a compute worker); a text that cannot be encoded is this
  request's 422, located where the request holds it (`TextLocator`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from app.backends import EncodeError
from app.config import default_of
from app.errors import InvalidInput, Overloaded
from app.heuristics import HeuristicConfig, HeuristicScore, heuristic_score
from app.schemas import Pair
from app.store import LoadedVersion

# requests waiting for a tokenizer thread, per thread, before more are refused with 429 at once
PENDING_PER_TOKENIZE_THREAD = 64
# where a request body holds item `index`'s "prompt" or "response": the `loc` of an error about that text
TextLocator = Callable[[int, str], list]


@dataclass(frozen=True)
class AdmissionPolicy:
    """How one call is admitted when the server is busy; None fields keep the BatchPolicy's values.

    Callers that honour Retry-After are refused fast; callers that cannot back off (trainers with fixed
    retries) are held in the queue for longer and refused with an error they do retry."""

    max_queue_wait_s: float | None = None  # refuse when the expected queue wait is longer (0 = no limit)
    overload_error: type[Overloaded] = Overloaded  # raised on refusal; the API layer maps it to a status
    holds: bool = False  # wait for a tokenizer thread rather than be refused when many requests wait


FAST_REFUSAL = AdmissionPolicy()  # the BatchPolicy's limits, refused with Overloaded


@dataclass(frozen=True)
class PairPayload:
    """One item on its way through the batcher, pinned to the version its request captured."""

    ids: list[int]  # exactly what the model reads (rendered, truncated)
    heuristic: HeuristicScore
    version: LoadedVersion


def encode_request(
    version: LoadedVersion, pairs: Sequence[Pair], heuristics: HeuristicConfig, locate: TextLocator
) -> list[PairPayload]:
    """Admission work of one request (a tokenizer thread): exact ids and the heuristic of every item;
    InvalidInput naming the field when a text cannot be encoded."""
    try:
        ids = version.backend.encode([p.prompt for p in pairs], [p.response for p in pairs])
    except EncodeError as exc:
        loc = locate(exc.index, exc.field)
        raise InvalidInput(
            f"cannot encode the {exc.field}: {exc.reason}", [{"loc": loc, "msg": exc.reason}]
        ) from exc
    return [
        PairPayload(one, heuristic_score(p.response, heuristics), version)
        for one, p in zip(ids, pairs, strict=True)
    ]


class Admission:
    """Encodes requests at admission on a few dedicated threads (never the event loop, never the compute
    thread); beyond `threads * PENDING_PER_TOKENIZE_THREAD` requests waiting, Overloaded at once."""

    def __init__(
        self,
        heuristics: HeuristicConfig,
        threads: int = default_of("tokenize_threads"),
        retry_after_s: int = default_of("retry_after_s"),
    ):
        self.heuristics = heuristics
        self.max_pending = threads * PENDING_PER_TOKENIZE_THREAD
        self.retry_after_s = retry_after_s
        self.pending = 0
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tokenize")

    async def encode(
        self,
        version: LoadedVersion,
        pairs: Sequence[Pair],
        locate: TextLocator,
        policy: AdmissionPolicy = FAST_REFUSAL,
    ) -> list[PairPayload]:
        """Exact ids and heuristics of a request's items; callers that cannot back off (`policy.holds`)
        wait for a tokenizer thread instead of being refused when many requests are waiting."""
        if self.pending >= self.max_pending and not policy.holds:
            raise policy.overload_error(
                f"{self.pending} requests are waiting to be tokenized; retry later",
                retry_after=self.retry_after_s,
            )
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._pool, encode_request, version, pairs, self.heuristics, locate
            )
        finally:
            self.pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
