"""What the trainer-compatible routes (app/api/openrlhf.py, app/api/openai.py) share: scoring options
from the URL, count limits, templated texts split into pairs, and the trainers' admission.

Texts are whole chat-templated prompt + response texts; app.templating splits them into prompt and
response. Scoring options a trainer cannot send in its body (namespace, alpha, beta, normalize, clip) may
be given as query parameters of the URL, e.g. `/get_reward?namespace=run-7&normalize=running`.

Backpressure fits these callers: they cannot back off (OpenRLHF retries 5 times at a fixed 1 s and ignores
Retry-After; verl retries server errors with backoff but never a 4xx), so their requests wait in the queue
up to `trainer_max_queue_wait_s` instead of getting a fast 429, and a refusal is a 503 with Retry-After,
which both retry. Counts are checked before any text is split, so a huge list is refused cheaply.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.admission import AdmissionPolicy, TextLocator
from app.api.cancellation import run_while_connected
from app.api.deps import get_settings
from app.config import NormalizeMode
from app.errors import InvalidInput, ServerBusy
from app.schemas import Pair, ScoreBatchResponse, ScoreOptions, Texts
from app.service import ScoringService
from app.templating import split_templated

SPLIT_HELP = (
    "render it with a chat template (ChatML, Llama 3, Gemma, Zephyr/Phi-3) or as "
    "'\\n\\nHuman: ...\\n\\nAssistant: ...', or send the templated prompt in `prompts`"
)
TOKEN_IDS_HELP = (
    "token ids are not accepted: they would be ids of the policy's vocabulary, and the reward model has its "
    "own tokenizer, so they cannot be scored correctly; send the decoded text (or `messages`) instead"
)


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
    locate: TextLocator,
    max_items: int | None = None,
) -> ScoreBatchResponse:
    """The /score_batch pipeline with the trainer routes' admission and timeout; ClientGone on disconnect."""
    policy = trainer_admission(request)
    work = service.score(pairs, options, locate, policy=policy, max_items=max_items)
    return await run_while_connected(request, work, get_settings(request).trainer_request_timeout_s)
