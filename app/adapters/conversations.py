"""What a trainer hands a reward function -> the (prompt, response) pair the service scores.

Trainers give a prompt either as text (maybe already chat-templated) or as a conversation of
{"role", "content"} messages, and a completion as text or as the assistant messages it produced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.templating import TextPair, completion_text, conversation_pair, split_templated

Prompt = str | Sequence[Mapping[str, Any]]


def to_pair(prompt: Prompt, completion: str | Sequence[Mapping[str, Any]]) -> TextPair:
    """The scored pair: templated text split as app.templating describes, conversations rendered HH-style
    (by the same function the service's conversation form uses)."""
    if isinstance(prompt, str):
        return split_templated(prompt + completion_text(completion), prompt=prompt)
    return conversation_pair(prompt, completion)


def to_pairs(prompts: Sequence[Prompt], completions: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Prompts and responses, in order, ready for RewardClient.score_batch."""
    pairs = [to_pair(p, c) for p, c in zip(prompts, completions, strict=True)]
    return [pair.prompt for pair in pairs], [pair.response for pair in pairs]
