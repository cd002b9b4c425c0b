"""What a trainer hands a reward function -> the (prompt, response) pair the service scores.

Trainers give a prompt either as text (maybe already chat-templated) or as a conversation of
{"role", "content"} messages, and a completion as text or as the assistant messages it produced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.templating import TextPair, message_text, render_messages, split_templated, strip_markers

Prompt = str | Sequence[Mapping[str, Any]]


def completion_text(completion: str | Sequence[Mapping[str, Any]]) -> str:
    """A completion's text: the string itself, or the content of its assistant messages."""
    if isinstance(completion, str):
        return completion
    return "".join(
        message_text(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant"
    )


def to_pair(prompt: Prompt, completion: str | Sequence[Mapping[str, Any]]) -> TextPair:
    """The scored pair: templated text split as app.templating describes, conversations rendered HH-style."""
    response = completion_text(completion)
    if isinstance(prompt, str):
        return split_templated(prompt + response, prompt=prompt)
    return TextPair(render_messages(prompt), strip_markers(response))


def to_pairs(prompts: Sequence[Prompt], completions: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Prompts and responses, in order, ready for RewardClient.score_batch."""
    pairs = [to_pair(p, c) for p, c in zip(prompts, completions, strict=True)]
    return [pair.prompt for pair in pairs], [pair.response for pair in pairs]
