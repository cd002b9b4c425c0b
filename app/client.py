"""Python client of the reward service: `RewardClient` (sync) and `AsyncRewardClient` over httpx.

Both share one policy (`_ClientCore`): request bodies, chunking, failover order and retry decisions. They
differ only in how they wait and send. What a caller can rely on:
- results come back in input order, one per pair;
- a failure is an exception (`on_error="raise"`, the default) or `None` for the items it hit
  (`on_error="none"`), never a made-up reward;
- 429, 502, 503, 504 and connection errors are retried with exponential backoff and full jitter, no sooner
  than the server's `Retry-After`; any other 4xx (a validation error) is never retried;
- with several base URLs a failing server is skipped at once and the next one is tried; the client then
  prefers the server that answered last;
- a batch larger than `chunk_size` is sent as several requests at once (at most `max_concurrency`), except
  with `normalize="batch"`, whose z-score is defined over one request and so is sent whole.

The client speaks HTTP only; it imports no server module.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx

log = logging.getLogger(__name__)

OnError = Literal["raise", "none"]
DEFAULT_URL = "http://127.0.0.1:8000"
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
Reward = float | None
Texts = Sequence[str]
Outcome = list[float] | BaseException  # a chunk's rewards, or why it failed


class RewardClientError(Exception):
    """Base class of every error the client raises."""


class RewardRequestError(RewardClientError):
    """The service refused the request (a 4xx other than 429, or a 500): retrying would not help."""

    def __init__(
        self, status_code: int, error_type: str, message: str, details: list, request_id: str | None
    ):
        super().__init__(f"{status_code} {error_type}: {message}")
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.details = details
        self.request_id = request_id


class RewardUnavailableError(RewardClientError):
    """Every attempt failed with a retryable error (overload, not ready, unreachable); `last` says how."""

    def __init__(self, attempts: int, last: str):
        super().__init__(f"reward service unavailable after {attempts} attempts; last: {last}")
        self.attempts = attempts
        self.last = last


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5  # retries after the first attempt, across all base URLs
    backoff_base: float = 0.25  # seconds; round r waits up to backoff_base * 2**r (full jitter)
    backoff_max: float = 20.0  # cap of one wait, Retry-After included

    def delay(self, round_number: int, retry_after: float) -> float:
        """Wait before starting round `round_number` (>= 1) of attempts over the base URLs."""
        jittered = random.uniform(0.0, self.backoff_base * 2 ** (round_number - 1))
        # clients told the same Retry-After spread over the next 20% instead of returning all at once
        return min(self.backoff_max, max(retry_after * random.uniform(1.0, 1.2), jittered))


def parse_retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); 0 when absent or unreadable."""
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - time.time())


def refusal_from(response: httpx.Response) -> RewardRequestError:
    """The service's error shape `{"error": {"type", "message", "details"}}` as an exception."""
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    body = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(body, dict):
        body = {}
    return RewardRequestError(
        response.status_code,
        str(body.get("type", "http_error")),
        str(body.get("message", response.text[:200])),
        list(body.get("details", [])),
        response.headers.get("x-request-id"),
    )


class _Attempts:
    """One request's walk over the base URLs: which URL next, and whether (and how long) to wait.

    Both clients iterate it (`for url in attempts`, `async for url in attempts`): each step waits as the
    retry policy says (not before the first attempt) and gives the URL of the next attempt, whose outcome
    the caller records, `answered(response)` within `recording()` (which records a transport error). The
    iteration ends after a success (`response`); it raises RewardRequestError on an answer that a retry
    would not change, and RewardUnavailableError when the retries are spent.
    """

    def __init__(self, core: _ClientCore):
        self._core = core
        self._start = core.preferred
        self._number = -1  # no attempt yet
        self._round_retry_after = 0.0
        self._last = ""
        self._outcome: httpx.Response | httpx.TransportError | None = None
        self.response: httpx.Response | None = None  # the successful answer, once there is one

    def url(self) -> str:
        return self._core.base_urls[(self._start + self._number) % len(self._core.base_urls)]

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Around one attempt: a transport error that ends it is its outcome."""
        try:
            yield
        except httpx.TransportError as exc:
            self._outcome = exc

    def answered(self, response: httpx.Response) -> None:
        self._outcome = response

    def __iter__(self) -> _Attempts:
        return self

    def __aiter__(self) -> _Attempts:
        return self

    def __next__(self) -> str:
        wait = self._next_wait(StopIteration)
        if wait is not None:
            time.sleep(wait)
        return self.url()

    async def __anext__(self) -> str:
        wait = self._next_wait(StopAsyncIteration)
        if wait is not None:
            await asyncio.sleep(wait)
        return self.url()

    def _next_wait(self, stop: type[Exception]) -> float | None:
        """None before the first attempt; after one, `stop` when it succeeded, else the wait before the
        next attempt (or raise when there is none)."""
        if self._number < 0:
            self._number = 0
            return None
        outcome, self._outcome = self._outcome, None
        if outcome is None:
            raise RuntimeError("an attempt ended without recording its outcome")
        if isinstance(outcome, httpx.Response) and outcome.is_success:
            self._core.preferred = (self._start + self._number) % len(self._core.base_urls)
            self.response = outcome
            raise stop
        self._record_failure(outcome)
        self._number += 1
        if self._number > self._core.retry.max_retries:
            raise RewardUnavailableError(self._number, self._last)
        urls = len(self._core.base_urls)
        if self._number % urls:
            return 0.0  # another server not tried in this round: fail over at once
        wait = self._core.retry.delay(self._number // urls, self._round_retry_after)
        self._round_retry_after = 0.0
        return wait

    def _record_failure(self, outcome: httpx.Response | httpx.TransportError) -> None:
        if isinstance(outcome, httpx.TransportError):
            self._last = f"{self.url()}: {type(outcome).__name__}: {outcome}"
        elif outcome.status_code in RETRYABLE_STATUS:
            retry_after = parse_retry_after(outcome.headers.get("retry-after"))
            self._round_retry_after = max(self._round_retry_after, retry_after)
            self._last = f"{self.url()}: HTTP {outcome.status_code}"
        else:
            raise refusal_from(outcome)
        log.debug("reward request attempt %d failed: %s", self._number + 1, self._last)


SCORE_BATCH = ("POST", "/score_batch")  # the request that scores a chunk


@dataclass(frozen=True)
class _Chunk:
    indices: list[int]  # positions of the chunk's pairs in the caller's batch
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def request(self) -> dict[str, Any]:
        """The keyword arguments of its SCORE_BATCH request."""
        return {"json": self.body, "headers": self.headers}


class _ClientCore:
    """Everything the sync and async clients share: options, bodies, chunks, failover state."""

    def __init__(
        self,
        base_urls: str | Sequence[str],
        *,
        namespace: str | None,
        options: dict[str, Any],
        chunk_size: int,
        on_error: OnError,
        retry: RetryPolicy,
    ):
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("give at least one base URL, e.g. http://127.0.0.1:8000")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if on_error not in ("raise", "none"):
            raise ValueError(f"on_error must be 'raise' or 'none', got {on_error!r}")
        self.base_urls = [url.rstrip("/") for url in urls]
        self.preferred = 0  # index of the base URL that answered last; read and written without a lock
        self.namespace = namespace
        self.options = {key: value for key, value in options.items() if value is not None}
        self.chunk_size = chunk_size
        self.on_error: OnError = on_error
        self.retry = retry

    def attempts(self) -> _Attempts:
        return _Attempts(self)

    def chunks(self, prompts: Texts, responses: Texts, overrides: dict[str, Any]) -> list[_Chunk]:
        """The requests that score a batch; pairs with an empty prompt (refused by the service) stay out."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses: give one per pair")
        scorable = self._scorable(prompts, responses)
        options = {**self.options, **{key: value for key, value in overrides.items() if value is not None}}
        namespace = options.pop("namespace", self.namespace)
        headers = {"X-Namespace": namespace} if namespace else {}
        if namespace:
            options["namespace"] = namespace
        # batch z-scores are defined over one request: splitting would change every reward
        size = max(len(scorable), 1) if options.get("normalize") == "batch" else self.chunk_size
        return [
            self._chunk(scorable[start : start + size], prompts, responses, options, headers)
            for start in range(0, len(scorable), size)
        ]

    def _scorable(self, prompts: Texts, responses: Texts) -> list[int]:
        empty = [i for i, p in enumerate(prompts) if not p]
        if empty and self.on_error == "raise":
            raise ValueError(
                f"pairs {empty[:10]} have an empty prompt, which the service refuses; "
                "drop them, or use on_error='none' to get None for them"
            )
        skipped = set(empty)
        return [i for i in range(len(prompts)) if i not in skipped]

    @staticmethod
    def _chunk(indices: list[int], prompts: Texts, responses: Texts, options: dict, headers: dict) -> _Chunk:
        items = [{"prompt": prompts[i], "response": responses[i]} for i in indices]
        return _Chunk(indices, {"items": items, **options}, headers)

    def rewards_of(self, chunk: _Chunk, response: httpx.Response) -> list[float]:
        """The chunk's rewards from the service's answer to its request."""
        rewards = response.json().get("rewards")
        if not isinstance(rewards, list) or len(rewards) != len(chunk.indices):
            got = len(rewards) if isinstance(rewards, list) else type(rewards).__name__
            raise RewardClientError(f"the service answered {got} rewards for {len(chunk.indices)} pairs")
        return [float(reward) for reward in rewards]

    def assemble(self, size: int, chunks: list[_Chunk], outcomes: list[Outcome]) -> list[Reward]:
        """Chunk outcomes -> one reward per pair in input order; a failed chunk raises or gives Nones."""
        rewards: list[Reward] = [None] * size
        for chunk, outcome in zip(chunks, outcomes, strict=True):
            if isinstance(outcome, RewardClientError) and self.on_error == "none":
                log.warning("reward service failed for %d pairs: %s", len(chunk.indices), outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                for index, reward in zip(chunk.indices, outcome, strict=True):
                    rewards[index] = reward
        return rewards


def _http_settings(timeout: float, connect_timeout: float, max_connections: int) -> dict[str, Any]:
    return {
        "timeout": httpx.Timeout(timeout, connect=connect_timeout),
        "limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        "headers": {"Accept": "application/json"},
    }


ENV_PREFIX = "REWARD_SERVICE_"
ENV_OPTIONS: dict[str, Callable[[str], Any]] = {
    "namespace": str, "alpha": float, "beta": float, "normalize": str, "clip": float, "on_error": str,
    "chunk_size": int, "max_concurrency": int, "timeout": float,
}  # fmt: skip


def options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Client arguments from REWARD_SERVICE_URL (comma-separated for failover) and REWARD_SERVICE_<OPTION>."""
    environ = os.environ if environ is None else environ
    urls = [url.strip() for url in environ.get(f"{ENV_PREFIX}URL", "").split(",") if url.strip()]
    options: dict[str, Any] = {"base_urls": urls or DEFAULT_URL}
    for name, parse in ENV_OPTIONS.items():
        raw = environ.get(f"{ENV_PREFIX}{name.upper()}", "").strip()
        if raw:
            try:
                options[name] = parse(raw)
            except ValueError as exc:
                raise ValueError(
                    f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {parse.__name__}"
                ) from exc
    return options


class _ClientBase:
    """Constructor arguments shared by both clients (documented once, here)."""

    def __init__(
        self,
        base_urls: str | Sequence[str],
        *,
        namespace: str | None = None,
        alpha: float | None = None,
        beta: float | None = None,
        normalize: Literal["none", "batch", "running"] | None = None,
        clip: float | None = None,
        on_error: OnError = "raise",
        chunk_size: int = 64,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ):
        """
        base_urls: one URL or several for failover, e.g. ["http://rm-0:8000", "http://rm-1:8000"].
        namespace: running-statistics namespace (e.g. the RL run id), also sent as the `X-Namespace` header
            so a load balancer can route a run to one replica. alpha, beta, normalize, clip: scoring
            options passed through to the service (None = the server's default). Each call may override.
        on_error: "raise" (a failure is an exception) or "none" (the pairs it hit get None).
        chunk_size: pairs per /score_batch request; max_concurrency: requests in flight per call.
        timeout: seconds for one HTTP attempt; connect_timeout: seconds to open a connection.
        retry: how often and how long to retry; transport: an httpx transport (a Unix socket, a proxy),
            sync for RewardClient and async for AsyncRewardClient.
        """
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self._core = _ClientCore(
            base_urls,
            namespace=namespace,
            options={"alpha": alpha, "beta": beta, "normalize": normalize, "clip": clip},
            chunk_size=chunk_size,
            on_error=on_error,
            retry=retry or RetryPolicy(),
        )
        self._max_concurrency = max_concurrency
        self._http_settings = _http_settings(timeout, connect_timeout, max_connections=max_concurrency * 2)
        if transport is not None:
            self._http_settings["transport"] = transport

    @classmethod
    def from_env(cls: type[ClientT], **overrides: Any) -> ClientT:
        """A client configured by REWARD_SERVICE_* environment variables; `overrides` win over them."""
        options = {**options_from_env(), **{k: v for k, v in overrides.items() if v is not None}}
        return cls(options.pop("base_urls"), **options)

    @property
    def base_urls(self) -> list[str]:
        return list(self._core.base_urls)


ClientT = TypeVar("ClientT", bound=_ClientBase)


class RewardClient(_ClientBase):
    """Blocking client; safe to share between threads. Use as a context manager or call close()."""

    def __init__(self, base_urls: str | Sequence[str], **kwargs: Any):
        super().__init__(base_urls, **kwargs)
        self._http = httpx.Client(**self._http_settings)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def score(self, prompt: str, response: str, **options: Any) -> Reward:
        """The reward of one pair (None only with on_error="none")."""
        return self.score_batch([prompt], [response], **options)[0]

    def score_batch(self, prompts: Texts, responses: Texts, **options: Any) -> list[Reward]:
        """One reward per (prompt, response) pair, in input order. Options: namespace, alpha, beta, ..."""
        chunks = self._core.chunks(prompts, responses, options)
        if len(chunks) == 1:
            outcomes = [self._outcome(chunks[0])]
        else:
            outcomes = list(self._chunk_pool().map(self._outcome, chunks))
        return self._core.assemble(len(prompts), chunks, outcomes)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Any endpoint with the client's retries and failover; returns the successful response."""
        attempts = self._core.attempts()
        for url in attempts:  # waits before a retry; raises when retrying would not help
            with attempts.recording():
                attempts.answered(self._http.request(method, url + path, **kwargs))
        return attempts.response

    def _outcome(self, chunk: _Chunk) -> Outcome:
        try:
            return self._core.rewards_of(chunk, self.request(*SCORE_BATCH, **chunk.request))
        except RewardClientError as exc:
            return exc

    def _chunk_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_concurrency, thread_name_prefix="reward-client")
            return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncRewardClient(_ClientBase):
    """asyncio client; share one per event loop. Use `async with` or await aclose()."""

    def __init__(self, base_urls: str | Sequence[str], **kwargs: Any):
        super().__init__(base_urls, **kwargs)
        self._http = httpx.AsyncClient(**self._http_settings)

    async def score(self, prompt: str, response: str, **options: Any) -> Reward:
        """The reward of one pair (None only with on_error="none")."""
        return (await self.score_batch([prompt], [response], **options))[0]

    async def score_batch(self, prompts: Texts, responses: Texts, **options: Any) -> list[Reward]:
        """One reward per (prompt, response) pair, in input order. Options: namespace, alpha, beta, ..."""
        chunks = self._core.chunks(prompts, responses, options)
        in_flight = asyncio.Semaphore(self._max_concurrency)

        async def bounded(chunk: _Chunk) -> Outcome:
            async with in_flight:
                return await self._outcome(chunk)

        outcomes = await asyncio.gather(*(bounded(chunk) for chunk in chunks))
        return self._core.assemble(len(prompts), chunks, list(outcomes))

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Any endpoint with the client's retries and failover; returns the successful response."""
        attempts = self._core.attempts()
        async for url in attempts:  # waits before a retry; raises when retrying would not help
            with attempts.recording():
                attempts.answered(await self._http.request(method, url + path, **kwargs))
        return attempts.response

    async def _outcome(self, chunk: _Chunk) -> Outcome:
        try:
            return self._core.rewards_of(chunk, await self.request(*SCORE_BATCH, **chunk.request))
        except RewardClientError as exc:
            return exc

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
