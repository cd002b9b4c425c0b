"""OpenAI-style routes, as vLLM and SGLang serve them (see app/api/trainer_scoring.py for the texts, query
options and backpressure these routes share):
- vLLM-style classification: POST /classify, /v1/classify (templated text, or vLLM's chat form `messages`).
- SGLang-style reward: POST /v1/embeddings, the reward as the last value of the last embedding (what
  verl's reward loop reads from an SGLang reward server).
- OpenAI-style model listing: GET /v1/models, /v1/models/{id}.
"""

from __future__ import annotations

import math
import time
import uuid

from fastapi import APIRouter, Request

from app.api.cancellation import with_cancellation
from app.api.deps import Service, service_of
from app.api.error_handlers import error_docs
from app.api.trainer_scoring import Options, check_count, pairs_of, score_for_trainer, texts_of
from app.errors import InvalidInput, NotFound
from app.schemas import (
    ClassifyItem,
    ClassifyRequest,
    ClassifyResponse,
    Embedding,
    EmbeddingsRequest,
    EmbeddingsResponse,
    Pair,
    pair_of_messages,
)
from app.store import LoadedVersion

router = APIRouter(tags=["trainer compatibility"], responses=error_docs(413, 422, 503, 504))


def classify_pairs(body: ClassifyRequest, limit: int) -> list[Pair]:
    if body.messages is not None:
        try:
            return [pair_of_messages(body.messages)]
        except ValueError as exc:
            raise InvalidInput(str(exc), [{"loc": ["body", "messages"], "msg": str(exc)}]) from exc
    texts = texts_of(body.input, "input")
    check_count(len(texts), limit, "input")
    return pairs_of(texts, None, "input")


@router.post("/classify", response_model=ClassifyResponse, summary="vLLM-style classification")
@router.post("/v1/classify", response_model=ClassifyResponse, summary="vLLM-style classification")
@with_cancellation
async def classify(body: ClassifyRequest, request: Request, options: Options) -> ClassifyResponse:
    """One class per input whose prob is the reward: sigmoid(reward), or the raw reward without activation."""
    service = service_of(request)
    pairs = classify_pairs(body, service.defaults.max_items)
    result = await score_for_trainer(request, service, pairs, options, body.text_loc)
    activate = next((flag for flag in (body.use_activation, body.activation) if flag is not None), True)
    data = [
        ClassifyItem(index=i, label="reward", probs=[sigmoid(r) if activate else r], num_classes=1)
        for i, r in enumerate(result.rewards)
    ]
    return ClassifyResponse(
        id=f"classify-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=result.model_version,
        data=data,
        usage=usage_of(result.input_tokens),
    )


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, summary="SGLang-style reward")
@with_cancellation
async def embeddings(body: EmbeddingsRequest, request: Request, options: Options) -> EmbeddingsResponse:
    """The reward of each input as a one-value embedding, as an SGLang reward server answers."""
    service = service_of(request)
    texts = texts_of(body.input, "input")
    check_count(len(texts), service.defaults.max_items, "input")
    pairs = pairs_of(texts, None, "input")
    result = await score_for_trainer(request, service, pairs, options, body.text_loc)
    data = [Embedding(index=i, embedding=[reward]) for i, reward in enumerate(result.rewards)]
    usage = usage_of(result.input_tokens)
    return EmbeddingsResponse(model=result.model_version, data=data, usage=usage)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def usage_of(tokens: int) -> dict[str, int | None]:
    return {
        "prompt_tokens": tokens,
        "total_tokens": tokens,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


def model_entry(version: LoadedVersion) -> dict:
    """The live version as an OpenAI/vLLM model object."""
    created = int(time.time())
    permission = {
        "id": f"modelperm-{version.version}", "object": "model_permission", "created": created,
        "allow_create_engine": False, "allow_sampling": False, "allow_logprobs": False,
        "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False, "organization": "*",
        "group": None, "is_blocking": False,
    }  # fmt: skip
    return {
        "id": version.version,
        "object": "model",
        "created": created,
        "owned_by": "reward-service",
        "root": version.version,
        "parent": None,
        "max_model_len": version.backend.max_len,
        "permission": [permission],
    }


@router.get("/v1/models", summary="The served model, OpenAI-style", responses=error_docs(503))
async def list_models(service: Service) -> dict:
    """The live model version as the one entry of an OpenAI-style model list."""
    return {"object": "list", "data": [model_entry(service.live_version())]}


@router.get("/v1/models/{model_id}", summary="One model, OpenAI-style", responses=error_docs(404, 503))
async def retrieve_model(model_id: str, service: Service) -> dict:
    """The live version's model object; 404 for any other id."""
    version = service.live_version()
    if model_id != version.version:
        raise NotFound(
            f"model {model_id!r} is not served; the live model is {version.version!r} (GET /v1/models)"
        )
    return model_entry(version)
