"""Request schemas refuse at the edge what the service could not honour, and accept what it can."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.schemas import Pair, ScoreBatchRequest, ScoreRequest

PAIR = {"prompt": "how do i boil an egg", "response": "eight minutes in boiling water"}


def refusal(model: type, data: dict) -> list[dict]:
    with pytest.raises(ValidationError) as refused:
        model.model_validate(data)
    return refused.value.errors()


def test_an_unknown_field_is_refused_so_that_a_typo_is_never_a_silent_default() -> None:
    (error,) = refusal(ScoreRequest, {**PAIR, "normalise": "batch"})
    assert error["type"] == "extra_forbidden" and error["loc"] == ("normalise",)


@pytest.mark.parametrize("field", ["alpha", "beta"])
@pytest.mark.parametrize("value", [-0.01, 1.01])
def test_weights_outside_zero_to_one_are_refused(field: str, value: float) -> None:
    (error,) = refusal(ScoreRequest, {**PAIR, field: value})
    assert error["loc"] == (field,)


@pytest.mark.parametrize("alpha, beta", [(0.0, 1.0), (1.0, 0.0), (0.0, None), (None, 1.0)])
def test_weights_at_the_bounds_are_accepted(alpha: float | None, beta: float | None) -> None:
    request = ScoreRequest.model_validate({**PAIR, "alpha": alpha, "beta": beta})
    assert (request.alpha, request.beta) == (alpha, beta)


def test_both_weights_zero_is_refused() -> None:
    (error,) = refusal(ScoreRequest, {**PAIR, "alpha": 0.0, "beta": 0.0})
    assert "alpha + beta must be > 0" in error["msg"]


def test_an_empty_response_is_scored_but_an_empty_prompt_is_refused() -> None:
    assert ScoreRequest.model_validate({**PAIR, "response": ""}).pairs() == [
        Pair(prompt=PAIR["prompt"], response="")
    ]
    (error,) = refusal(ScoreRequest, {**PAIR, "prompt": ""})
    assert error["loc"] == ("prompt",)


def test_a_conversation_becomes_the_pair_it_means() -> None:
    messages = [
        {"role": "user", "content": "how do i boil an egg"},
        {"role": "assistant", "content": "eight minutes in boiling water"},
    ]
    (pair,) = ScoreRequest.model_validate({"messages": messages}).pairs()
    assert "how do i boil an egg" in pair.prompt and pair.response == "eight minutes in boiling water"
    (item,) = ScoreBatchRequest.model_validate({"items": [{"messages": messages}]}).pairs()
    assert item == pair


def test_a_conversation_and_a_pair_together_are_refused() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    (error,) = refusal(ScoreRequest, {**PAIR, "messages": messages})
    assert "either prompt and response, or messages" in error["msg"]


def test_a_conversation_without_a_user_turn_is_refused_naming_the_item() -> None:
    (error,) = refusal(
        ScoreBatchRequest, {"items": [PAIR, {"messages": [{"role": "assistant", "content": "x"}]}]}
    )
    assert "items.1.messages" in error["msg"]
