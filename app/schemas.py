"""Request, response and error models of the HTTP API. Descriptions feed the OpenAPI page.

Static rules live here (types, ranges, modes); limits that come from settings (text length, item count)
are checked by the service, which reports them in the same error shape. Conversations (OpenAI-style
message lists) become pairs with app.templating, as the trainer adapters' conversations do.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from app.config import NormalizeMode, default_of
from app.errors import CheckpointError
from app.names import validate_version_name
from app.templating import split_conversation

NAMESPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class StrictModel(BaseModel):
    # unknown fields are refused so that a typo ("normalise") is an error, not a silent default
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Pair(StrictModel):
    # non-empty checked in Python, not by min_length: pydantic's length check refuses a lone surrogate as
    # a ValidationError wherever a Pair is built (a 500 in routes that build Pairs from templated text);
    # such text is refused with the same 422, naming the field, when it is tokenized at admission
    prompt: str = Field(
        json_schema_extra={"minLength": 1}, description="The prompt (conversation so far). Non-empty."
    )
    response: str = Field(
        description="The response to score. May be empty: an empty generation is scored (the heuristic's "
        "too-short penalty applies), not refused."
    )

    @field_validator("prompt")
    @classmethod
    def refuse_empty_prompt(cls, prompt: str) -> str:
        if not prompt:
            raise ValueError("the prompt must not be empty")
        return prompt


class ScoreOptions(StrictModel):
    alpha: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description=f"Heuristic weight in [0, 1]; default from the server ({default_of('alpha')}).",
    )
    beta: float | None = Field(
        None, ge=0.0, le=1.0, description="Model weight in [0, 1]; alpha and beta are normalized to sum 1."
    )
    normalize: NormalizeMode | None = Field(
        None,
        description="none: the hybrid reward; batch: z-score within this request's items (one item -> 0); "
        "running: z-score with the namespace's running mean/variance (EMA), updated by this request.",
    )
    namespace: str = Field(
        "default",
        pattern=NAMESPACE_PATTERN,
        description="Running-statistics namespace, e.g. the RL run id: runs never mix statistics.",
    )
    clip: float | None = Field(None, gt=0.0, description="Clip the final reward to [-clip, clip].")

    @model_validator(mode="after")
    def check_weights(self) -> ScoreOptions:
        if self.alpha is not None and self.beta is not None and self.alpha + self.beta <= 0:
            raise ValueError("alpha + beta must be > 0")
        return self


class ChatMessage(BaseModel):
    # OpenAI messages carry more (name, tool_calls, tool_call_id): ignored, they are not scored
    model_config = ConfigDict(extra="ignore", strict=True)

    role: str = Field(description="system, user, assistant (or human, model, gpt).")
    content: str | list[dict[str, Any]] | None = Field(
        None, description="Text, or a list of {'type': 'text', 'text': ...} parts; null counts as empty."
    )


CHAT_MESSAGES = TypeAdapter(list[ChatMessage])
CONVERSATION_HELP = (
    "an OpenAI-style conversation ending with the assistant's response: the trailing assistant messages "
    "are the response, the turns before them the prompt (rendered as '\\n\\nHuman: ...\\n\\nAssistant:', "
    "as the trainer adapters render conversations)"
)


def pair_of_messages(messages: list[ChatMessage]) -> Pair:
    """The pair a conversation means; ValueError when it has no prompt to score."""
    split = split_conversation([m.model_dump() for m in messages])
    if not split.prompt:
        raise ValueError(
            "a conversation needs a user turn, then the assistant's response as its last message"
        )
    return Pair(prompt=split.prompt, response=split.response)


def pair_fields_of(conversation: Any) -> dict[str, str]:
    """{"prompt", "response"} of a raw `messages` value, checked here so that its errors read plainly."""
    try:
        messages = CHAT_MESSAGES.validate_python(conversation)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(
            f"messages.{where}: {first['msg']}" if where else f"messages: {first['msg']}"
        ) from None
    try:
        return pair_of_messages(messages).model_dump()
    except ValueError as exc:
        raise ValueError(f"messages: {exc}") from None


class ScoreRequest(ScoreOptions, Pair):
    messages: list[ChatMessage] | None = Field(
        None, description="Instead of prompt and response: " + CONVERSATION_HELP + "."
    )

    @model_validator(mode="before")
    @classmethod
    def render_conversation(cls, data: Any) -> Any:
        # a conversation becomes prompt and response before the fields are checked, so the checks and
        # their error locations are those of the pair form
        if isinstance(data, dict) and data.get("messages") is not None:
            if "prompt" in data or "response" in data:
                raise ValueError("send either prompt and response, or messages, not both")
            return {**data, **pair_fields_of(data["messages"])}
        return data

    def pairs(self) -> list[Pair]:
        return [Pair(prompt=self.prompt, response=self.response)]

    @staticmethod
    def text_loc(index: int, field: str) -> list:
        """Where this body holds an item's prompt or response, for error details."""
        return ["body", field]


class ScoreBatchRequest(ScoreOptions):
    items: list[Pair] = Field(
        min_length=1,
        description="Pairs to score, returned in the same order. An item may instead be a conversation "
        "{'messages': [...]}: " + CONVERSATION_HELP + ".",
    )

    @field_validator("items", mode="before")
    @classmethod
    def render_conversations(cls, items: Any) -> Any:
        if not isinstance(items, list):
            return items
        return [render_item(item, index) for index, item in enumerate(items)]

    def pairs(self) -> list[Pair]:
        return self.items

    @staticmethod
    def text_loc(index: int, field: str) -> list:
        """Where this body holds an item's prompt or response, for error details."""
        return ["body", "items", index, field]


def render_item(item: Any, index: int) -> Any:
    """A {"messages": [...]} item -> its {"prompt", "response"}; any other item is left to the Pair checks."""
    if not (isinstance(item, dict) and set(item) == {"messages"}):
        return item
    try:
        return pair_fields_of(item["messages"])
    except ValueError as exc:
        raise ValueError(f"items.{index}.{exc}") from None


class HeuristicParts(BaseModel):
    toxicity: float = Field(description="Toxicity in [0, 1] from the toxic-keyword ratio.")
    words: int = Field(description="Words in the response.")
    unique_ratio: float = Field(description="Distinct words / words.")
    toxicity_penalty: float
    length_penalty: float
    repetition_penalty: float


class ItemScore(BaseModel):
    reward: float = Field(description="The final reward: hybrid, then normalized, then clipped.")
    model_raw: float = Field(description="The model's raw output (no fixed scale).")
    model_reward: float = Field(description="(model_raw - reward_mean) / reward_std of the checkpoint.")
    heuristic_reward: float = Field(description="The heuristic reward (1.0 minus penalties).")
    hybrid_reward: float = Field(description="alpha * heuristic_reward + beta * model_reward.")
    normalized_reward: float = Field(description="The hybrid reward after normalization, before clipping.")
    heuristic: HeuristicParts


class ScoringContext(BaseModel):
    model_version: str = Field(description="The model version that scored every item of the request.")
    alpha: float = Field(description="Heuristic weight used (normalized).")
    beta: float = Field(description="Model weight used (normalized).")
    normalize: NormalizeMode
    namespace: str
    clip: float | None


class ScoreResponse(ItemScore, ScoringContext):
    pass


class ScoreBatchResponse(ScoringContext):
    rewards: list[float] = Field(description="Final rewards in input order.")
    items: list[ItemScore] = Field(description="Every part of every reward, in input order.")
    # not part of the answer: the tokens the model read, counted at admission (/classify reports usage)
    input_tokens: int = Field(0, exclude=True)


class RunningStatsResponse(BaseModel):
    namespace: str
    count: int = Field(description="Rewards folded into the statistics.")
    mean: float = Field(description="Exponential moving average of the hybrid reward.")
    variance: float = Field(description="Exponential moving variance of the hybrid reward.")
    momentum: float


class ModelInfo(BaseModel):
    version: str
    architecture: dict = Field(
        description="RewardModelConfig of a native checkpoint; backend, model_type and rendering of a "
        "Hugging Face one."
    )
    encoding: dict = Field(description="How pairs become token ids (max_len, special tokens, template).")
    parameters: int
    device: str
    dtype: str
    execution: dict = Field(
        description="The forward pass's path (float32, bfloat16, onnx, ...), whether a setting forced it "
        "or it was measured at load ('auto'), and each candidate's canary items/s and deviation from "
        "float32; `compute`: the compute workers and whether batches run side by side (measured on the "
        "first version loaded, with both layouts' canary items/s)."
    )
    calibration: dict = Field(description="reward_mean and reward_std used to standardize model_raw.")
    metrics: dict = Field(description="Training metrics from the checkpoint's metrics.json.")
    refusal_check: dict | None = Field(
        None,
        description="Per validation source: how often the chosen answer beats a generic refusal "
        "(beats_refusal, wanted on benign prompts) and a refusal beats the rejected answer "
        "(refusal_beats_rejected, wanted on harmful ones); null for versions trained without the check.",
    )
    manifest: dict = Field(description="The version's manifest (created, training arguments, data).")


class HealthResponse(BaseModel):
    status: str
    model_version: str | None = None
    stats_snapshot: dict | None = Field(
        None,
        description="Running-statistics snapshot (readiness only): last_success (Unix time or null), "
        "failures so far, last_error (null once a snapshot succeeds). Failures never make it unready.",
    )


class ReloadRequest(StrictModel):
    version: str | None = Field(
        None, description="The version to load; default: the store's CURRENT. Naming one also moves CURRENT."
    )

    @field_validator("version")
    @classmethod
    def check_version_name(cls, value: str | None) -> str | None:
        try:
            return value if value is None else validate_version_name(value)
        except CheckpointError as exc:
            raise ValueError(exc.message) from exc


class ReloadResponse(BaseModel):
    outcome: str = Field(description="success, rollback, or unchanged when the version already serves.")
    model_version: str = Field(description="The version serving from now on.")
    previous_version: str | None = Field(description="The version it replaced (kept loaded for a rollback).")
    load_seconds: float | None = Field(description="Time to verify, load and warm up the new version.")


class ErrorBody(BaseModel):
    type: str = Field(description="validation_error, payload_too_large, overloaded, not_ready, ...")
    message: str
    details: list[dict] = Field(default_factory=list, description="Fields at fault and their limits.")
    code: int | None = Field(None, description="The HTTP status (OpenAI-style clients read it).")
    param: str | None = Field(None, description="The first field at fault, dotted ('items.0.prompt').")


class ErrorResponse(BaseModel):
    error: ErrorBody


# Trainer-compatible endpoints (/get_reward, /classify, /v1/embeddings): other clients' wire formats.
Texts = str | list[str] | list[int] | list[list[int]]


class CompatModel(BaseModel):
    # other clients' bodies carry fields we have no use for (user, priority, ...): ignored, not refused
    model_config = ConfigDict(extra="ignore")


class GetRewardRequest(CompatModel):
    query: list[str] = Field(description="Full templated prompt + response texts.")
    prompts: list[str] | None = Field(None, description="The templated prompt of each query (its prefix).")
    labels: list[Any] | None = Field(None, description="Reference answers; accepted and not used.")

    @staticmethod
    def text_loc(index: int, field: str) -> list:
        """Both parts of an item come from its one query text."""
        return ["body", "query", index]


class GetRewardResponse(BaseModel):
    rewards: list[float] = Field(description="The final reward of each query, in order.")
    scores: list[float] = Field(description="The same rewards (OpenRLHF uses them for dynamic filtering).")
    extra_logs: dict[str, list[float]] = Field(
        description="Per-query parts OpenRLHF logs as means; both keys are always there."
    )


class TextsRequest(CompatModel):
    model: str | None = Field(None, description="Any name; the live model version answers.")
    input: Texts | None = Field(None, description="Templated prompt + response text(s). Not token ids.")

    def text_loc(self, index: int, field: str) -> list:
        """Both parts of an item come from its one input text."""
        return ["body", "input", index]


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

    def text_loc(self, index: int, field: str) -> list:
        return ["body", "messages"] if self.messages is not None else super().text_loc(index, field)


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
