"""Disconnects and time limits of scoring routes: a request whose client has gone stops waiting for its
rewards (its queued items are dropped) and is answered 499; one that outlives its time limit gets 504."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request, Response

from app.api.deps import get_settings
from app.errors import RequestTimeout

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's convention; nobody reads it, the client is gone


class ClientGone(Exception):
    """The client disconnected before its rewards were ready."""


async def wait_for_disconnect(request: Request) -> None:
    # the body is already read, so the next ASGI message is the disconnect
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_while_connected(request: Request, work: Awaitable[T], timeout_s: float | None = None) -> T:
    """Await `work`, cancelling it (its queued items are then dropped) on disconnect or after `timeout_s`
    (default: the request_timeout_s setting)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    timeout = timeout_s or get_settings(request).request_timeout_s
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if watcher in done:
        raise ClientGone
    raise RequestTimeout(f"not scored within the request timeout ({timeout:g} s); the queue is too long")


def with_cancellation(route: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T | Response]]:
    """A scoring route that answers 499 when its client disconnects (ClientGone from run_while_connected).
    functools.wraps keeps the route's signature, which FastAPI reads for its parameters."""

    @functools.wraps(route)
    async def answer_unless_gone(*args: object, **kwargs: object) -> T | Response:
        try:
            return await route(*args, **kwargs)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)

    return answer_unless_gone
