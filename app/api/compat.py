"""Wire compatibility with RL trainers, as thin routes over the ScoringService that /score uses.

- OpenRLHF remote reward (`--reward.remote_url http://host:8000/get_reward`): POST /get_reward.
- vLLM/SGLang-style classification (verl's discriminative reward path): POST /classify, /v1/classify,
  GET /v1/models.
Both receive whole chat-templated texts; app.templating splits them into prompt and response. Scoring
options a trainer cannot send in its body (namespace, alpha, beta, normalize, clip) may be given as query
parameters of the URL, e.g. `/get_reward?namespace=run-7&normalize=running`.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.api.deps import Service
from app.api.errors import error_docs
from app.api.score import CLIENT_CLOSED, ClientGone, run_while_connected
from app.errors import InvalidInput
from app.schemas import NormalizeMode, Pair, ScoreBatchResponse, ScoreOptions
from app.service import ScoringService
from app.templating import split_templated

router = APIRouter(tags=["trainer compatibility"], responses=error_docs(413, 422, 429, 503, 504))
SPLIT_HELP = (
    "render it with a chat template (ChatML, Llama 3, Gemma, Zephyr/Phi-3) or as "
    "'\\n\\nHuman: ...\\n\\nAssistant: ...', or send the templated prompt in `prompts`"
)


class CompatModel(BaseModel):
    # other clients' bodies carry fields we have no use for (user, priority, ...): ignored, not refused
    model_config = ConfigDict(extra="ignore")


class GetRewardRequest(CompatModel):
    query: list[str] = Field(description="Full templated prompt + response texts.")
    prompts: list[str] | None = Field(None, description="The templated prompt of each query (its prefix).")
    labels: list[Any] | None = Field(None, description="Reference answers; accepted and not used.")


class GetRewardResponse(BaseModel):
    rewards: list[float] = Field(description="The final reward of each query, in order.")
    scores: list[float] = Field(description="The same rewards (OpenRLHF uses them for dynamic filtering).")
    extra_logs: dict[str, list[float]] = Field(description="Per-query parts OpenRLHF logs as means.")


class ClassifyRequest(CompatModel):
    model: str | None = Field(None, description="Any name; the live model version answers.")
    input: str | list[str] = Field(description="Templated prompt + response text(s).")
    use_activation: bool | None = Field(None, description="Sigmoid of the reward (default), or the raw one.")
    activation: bool | None = Field(None, description="Older name of use_activation.")


class ClassifyItem(BaseModel):
    index: int
    label: str
    probs: list[float] = Field(description="One class: [sigmoid(reward)], or [reward] without activation.")
    num_classes: int


class ClassifyResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ClassifyItem]
    usage: dict[str, int | None]


async def query_options(
    namespace: str = "default",
    alpha: float | None = None,
    beta: float | None = None,
    normalize: NormalizeMode | None = None,
    clip: float | None = None,
) -> ScoreOptions:
    """Scoring options from the URL's query string, checked by the same schema as /score's body."""
    try:
        return ScoreOptions(namespace=namespace, alpha=alpha, beta=beta, normalize=normalize, clip=clip)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors()]) from exc


Options = Annotated[ScoreOptions, Depends(query_options)]


def pairs_of(texts: list[str], prompts: list[str] | None, field: str) -> list[Pair]:
    """Split every templated text; one that gives no prompt is refused, naming it. An empty response (the
    policy stopped at once) is scored like any other."""
    if prompts is not None and len(prompts) != len(texts):
        raise InvalidInput(f"{len(prompts)} prompts for {len(texts)} {field} texts: send one prompt per text")
    splits = [split_templated(text, prompts[i] if prompts else None) for i, text in enumerate(texts)]
    unsplit = [i for i, pair in enumerate(splits) if not pair.prompt]
    if unsplit:
        message = f"no prompt found in the text: {SPLIT_HELP}"
        details = [{"loc": ["body", field, i], "msg": message} for i in unsplit]
        raise InvalidInput(f"cannot score {field} {unsplit[:10]}: {message}", details)
    return [Pair(prompt=pair.prompt, response=pair.response) for pair in splits]


async def score_pairs(
    request: Request, service: ScoringService, pairs: list[Pair], options: ScoreOptions
) -> ScoreBatchResponse:
    """The /score_batch pipeline (disconnect and timeout handling included) for already split pairs."""
    return await run_while_connected(request, service.score(pairs, options, batch=True))


@router.post("/get_reward", response_model=GetRewardResponse, summary="OpenRLHF remote reward")
async def get_reward(
    body: GetRewardRequest, request: Request, service: Service, options: Options
) -> GetRewardResponse | Response:
    """Rewards of OpenRLHF queries; an empty `query` gets empty lists."""
    if not body.query:
        return GetRewardResponse(rewards=[], scores=[], extra_logs={})
    try:
        result = await score_pairs(request, service, pairs_of(body.query, body.prompts, "query"), options)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    return GetRewardResponse(rewards=result.rewards, scores=result.rewards, extra_logs=extra_logs(result))


def extra_logs(result: ScoreBatchResponse) -> dict[str, list[float]]:
    return {
        "model_reward": [item.model_reward for item in result.items],
        "heuristic_reward": [item.heuristic_reward for item in result.items],
    }


@router.post("/classify", response_model=ClassifyResponse, summary="vLLM-style classification")
@router.post("/v1/classify", response_model=ClassifyResponse, summary="vLLM-style classification")
async def classify(
    body: ClassifyRequest, request: Request, service: Service, options: Options
) -> ClassifyResponse | Response:
    """One class per input whose prob is the reward: sigmoid(reward), or the raw reward without activation."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    pairs = pairs_of(texts, None, "input")
    try:
        result = await score_pairs(request, service, pairs, options)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
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


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def usage_of(tokens: int) -> dict[str, int | None]:
    return {
        "prompt_tokens": tokens,
        "total_tokens": tokens,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }


@router.get("/v1/models", summary="The served model, OpenAI-style", responses=error_docs(503))
async def list_models(service: Service) -> dict:
    """The live model version as the one entry of an OpenAI-style model list."""
    version = service.live_version()
    entry = {
        "id": version.version,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "reward-service",
        "root": version.version,
        "max_model_len": version.tokenizer.spec.max_len,
    }
    return {"object": "list", "data": [entry]}
