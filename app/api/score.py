"""POST /score and /score_batch: thin routes over ScoringService (served by app/api/direct_routes.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.cancellation import run_while_connected, with_cancellation
from app.api.deps import service_of
from app.api.error_handlers import error_docs
from app.schemas import ScoreBatchRequest, ScoreBatchResponse, ScoreRequest, ScoreResponse

router = APIRouter(tags=["scoring"], responses=error_docs(413, 422, 429, 503, 504))


@router.post("/score", response_model=ScoreResponse, summary="Score one (prompt, response) pair")
@with_cancellation
async def score_pair(body: ScoreRequest, request: Request) -> ScoreResponse:
    """The reward of one pair and every part of it (model, heuristic, hybrid, normalized)."""
    work = service_of(request).score(body.pairs(), body, body.text_loc)
    result = await run_while_connected(request, work)
    context = result.model_dump(exclude={"rewards", "items"})
    return ScoreResponse(**context, **result.items[0].model_dump())


@router.post(
    "/score_batch", response_model=ScoreBatchResponse, summary="Score many pairs with one model version"
)
@with_cancellation
async def score_batch(body: ScoreBatchRequest, request: Request) -> ScoreBatchResponse:
    """Rewards of all items in input order, all scored by one model version."""
    work = service_of(request).score(body.pairs(), body, body.text_loc)
    return await run_while_connected(request, work)
