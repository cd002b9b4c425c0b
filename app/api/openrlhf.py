"""OpenRLHF remote reward (`--reward.remote_url http://host:8000/get_reward`): POST /get_reward, one sample
per request (>= 0.9.1) or a whole rollout in one request (<= 0.9.0). See app/api/trainer_scoring.py for
the texts, query options and backpressure these routes share."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.cancellation import with_cancellation
from app.api.deps import get_settings, service_of
from app.api.error_handlers import error_docs
from app.api.trainer_scoring import Options, check_count, pairs_of, score_for_trainer
from app.schemas import GetRewardRequest, GetRewardResponse, ScoreBatchResponse

router = APIRouter(tags=["trainer compatibility"], responses=error_docs(413, 422, 503, 504))


@router.post("/get_reward", response_model=GetRewardResponse, summary="OpenRLHF remote reward")
@with_cancellation
async def get_reward(body: GetRewardRequest, request: Request, options: Options) -> GetRewardResponse:
    """Rewards of OpenRLHF queries, one or a whole rollout (up to get_reward_max_items); an empty `query`
    gets empty lists."""
    settings, service = get_settings(request), service_of(request)
    max_items = min(settings.get_reward_max_items, settings.queue_size)  # a larger one could never queue
    check_count(len(body.query), max_items, "query")
    if not body.query:
        return reward_answer(None)
    pairs = pairs_of(body.query, body.prompts, "query")
    return reward_answer(await score_for_trainer(request, service, pairs, options, body.text_loc, max_items))


def reward_answer(result: ScoreBatchResponse | None) -> GetRewardResponse:
    """OpenRLHF's answer; every extra_logs key is there even with no query (it reads them unconditionally)."""
    items = result.items if result else []
    rewards = [item.reward for item in items]
    extra_logs = {
        "model_reward": [item.model_reward for item in items],
        "heuristic_reward": [item.heuristic_reward for item in items],
    }
    return GetRewardResponse(rewards=rewards, scores=rewards, extra_logs=extra_logs)
