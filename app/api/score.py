"""POST /score and /score_batch: thin routes over ScoringService."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, Request, Response

from app.api.deps import Service, get_settings
from app.api.error_handlers import error_docs
from app.errors import RequestTimeout
from app.schemas import ScoreBatchRequest, ScoreBatchResponse, ScoreRequest, ScoreResponse

router = APIRouter(tags=["scoring"], responses=error_docs(413, 422, 429, 503, 504))
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


@router.post("/score", response_model=ScoreResponse, summary="Score one (prompt, response) pair")
async def score_pair(body: ScoreRequest, request: Request, service: Service) -> ScoreResponse | Response:
    """The reward of one pair and every part of it (model, heuristic, hybrid, normalized)."""
    try:
        result = await run_while_connected(request, service.score(body.pairs(), body, batch=False))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    context = result.model_dump(exclude={"rewards", "items"})
    return ScoreResponse(**context, **result.items[0].model_dump())


@router.post(
    "/score_batch", response_model=ScoreBatchResponse, summary="Score many pairs with one model version"
)
async def score_batch(
    body: ScoreBatchRequest, request: Request, service: Service
) -> ScoreBatchResponse | Response:
    """Rewards of all items in input order, all scored by one model version."""
    try:
        return await run_while_connected(request, service.score(body.pairs(), body, batch=True))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
