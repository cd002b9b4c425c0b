"""Wire compatibility with RL trainers, as thin routes over the ScoringService that /score uses.

- OpenRLHF remote reward (`--reward.remote_url http://host:8000/get_reward`): POST /get_reward, one sample
  per request (>= 0.9.1) or a whole rollout in one request (<= 0.9.0).
- vLLM-style classification: POST /classify, /v1/classify (templated text, or vLLM's chat form `messages`).
- SGLang-style reward: POST /v1/embeddings, the reward as the last value of the last embedding (what
  verl's reward loop reads from an SGLang reward server).
- OpenAI-style model listing: GET /v1/models, /v1/models/{id}.
Texts are whole chat-templated prompt + response texts; app.templating splits them into prompt and
response. Scoring options a trainer cannot send in its body (namespace, alpha, beta, normalize, clip) may
be given as query parameters of the URL, e.g. `/get_reward?namespace=run-7&normalize=running`.

Backpressure fits these callers: they cannot back off (OpenRLHF retries 5 times at a fixed 1 s and ignores
Retry-After; verl retries server errors with backoff but never a 4xx), so their requests wait in the queue
up to `trainer_max_queue_wait_s` instead of getting a fast 429, and a refusal is a 503 with Retry-After,
which both retry. Counts are checked before any text is split, so a huge list is refused cheaply.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.api.deps import Service, get_settings
from app.api.error_handlers import error_docs
from app.api.score import CLIENT_CLOSED, ClientGone, run_while_connected
from app.batcher import AdmissionPolicy
from app.errors import InvalidInput, NotFound, ServerBusy
from app.schemas import ChatMessage, NormalizeMode, Pair, ScoreBatchResponse, ScoreOptions, pair_of_messages
from app.service import ScoringService
from app.store import LoadedVersion
from app.templating import split_templated

router = APIRouter(tags=["trainer compatibility"], responses=error_docs(413, 422, 503, 504))
SPLIT_HELP = (
    "render it with a chat template (ChatML, Llama 3, Gemma, Zephyr/Phi-3) or as "
    "'\\n\\nHuman: ...\\n\\nAssistant: ...', or send the templated prompt in `prompts`"
)
TOKEN_IDS_HELP = (
    "token ids are not accepted: they would be ids of the policy's vocabulary, and the reward model has its "
    "own tokenizer, so they cannot be scored correctly; send the decoded text (or `messages`) instead"
)
Texts = str | list[str] | list[int] | list[list[int]]


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
    extra_logs: dict[str, list[float]] = Field(
        description="Per-query parts OpenRLHF logs as means; both keys are always there."
    )


class TextsRequest(CompatModel):
    model: str | None = Field(None, description="Any name; the live model version answers.")
    input: Texts | None = Field(None, description="Templated prompt + response text(s). Not token ids.")


class ClassifyRequest(TextsRequest):
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, description="vLLM's chat form instead of `input`: one conversation, ending with "
        "the assistant's response, rendered as the trainer adapters render conversations.",
    )  # fmt: skip
    use_activation: bool | None = Field(None, description="Sigmoid of the reward (default), or the raw one.")
    activation: bool | None = Field(None, description="Older name of use_activation.")

    @model_validator(mode="after")
    def check_one_form(self) -> ClassifyRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError("send `input` (templated texts) or `messages` (one conversation), exactly one")
        return self


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


class EmbeddingsRequest(TextsRequest):
    input: Texts = Field(description="Templated prompt + response text(s). Not token ids.")


class Embedding(BaseModel):
    object: str = "embedding"
    index: int
    embedding: list[float] = Field(description="[reward]: the last value is the reward, as SGLang's.")


class EmbeddingsResponse(BaseModel):
    object: str = "list"
    model: str
    data: list[Embedding]
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


def check_count(count: int, limit: int, field: str) -> None:
    """Refuse too many texts before any of them is split: the cost of a refusal stays small."""
    if count > limit:
        details = [{"loc": ["body", field], "msg": "too many items", "limit": limit, "got": count}]
        raise InvalidInput(f"too many {field} texts: {count} > {limit}", details)


def texts_of(texts: Texts, field: str) -> list[str]:
    """The texts of an `input`; token ids are refused, saying why."""
    texts = [texts] if isinstance(texts, str) else texts
    if texts and not isinstance(texts[0], str):
        raise InvalidInput(TOKEN_IDS_HELP, [{"loc": ["body", field], "msg": TOKEN_IDS_HELP}])
    return texts


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


def trainer_admission(request: Request) -> AdmissionPolicy:
    """Hold the request in the queue up to the trainer deadline; refuse with a 503 the trainers retry."""
    return AdmissionPolicy(
        get_settings(request).trainer_max_queue_wait_s, overload_error=ServerBusy, holds=True
    )


async def score_for_trainer(
    request: Request,
    service: ScoringService,
    pairs: list[Pair],
    options: ScoreOptions,
    max_items: int | None = None,
) -> ScoreBatchResponse:
    """The /score_batch pipeline with the trainer routes' admission and timeout; ClientGone on disconnect."""
    work = service.score(pairs, options, batch=True, policy=trainer_admission(request), max_items=max_items)
    return await run_while_connected(request, work, get_settings(request).trainer_request_timeout_s)


@router.post("/get_reward", response_model=GetRewardResponse, summary="OpenRLHF remote reward")
async def get_reward(
    body: GetRewardRequest, request: Request, service: Service, options: Options
) -> GetRewardResponse | Response:
    """Rewards of OpenRLHF queries, one or a whole rollout (up to get_reward_max_items); an empty `query`
    gets empty lists."""
    settings = get_settings(request)
    max_items = min(settings.get_reward_max_items, settings.queue_size)  # a larger one could never queue
    check_count(len(body.query), max_items, "query")
    if not body.query:
        return reward_answer(None)
    pairs = pairs_of(body.query, body.prompts, "query")
    try:
        return reward_answer(await score_for_trainer(request, service, pairs, options, max_items))
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)


def reward_answer(result: ScoreBatchResponse | None) -> GetRewardResponse:
    """OpenRLHF's answer; every extra_logs key is there even with no query (it reads them unconditionally)."""
    items = result.items if result else []
    rewards = [item.reward for item in items]
    extra_logs = {
        "model_reward": [item.model_reward for item in items],
        "heuristic_reward": [item.heuristic_reward for item in items],
    }
    return GetRewardResponse(rewards=rewards, scores=rewards, extra_logs=extra_logs)


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
async def classify(
    body: ClassifyRequest, request: Request, service: Service, options: Options
) -> ClassifyResponse | Response:
    """One class per input whose prob is the reward: sigmoid(reward), or the raw reward without activation."""
    pairs = classify_pairs(body, service.defaults.max_items)
    try:
        result = await score_for_trainer(request, service, pairs, options)
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


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, summary="SGLang-style reward")
async def embeddings(
    body: EmbeddingsRequest, request: Request, service: Service, options: Options
) -> EmbeddingsResponse | Response:
    """The reward of each input as a one-value embedding, as an SGLang reward server answers."""
    texts = texts_of(body.input, "input")
    check_count(len(texts), service.defaults.max_items, "input")
    pairs = pairs_of(texts, None, "input")
    try:
        result = await score_for_trainer(request, service, pairs, options)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
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
