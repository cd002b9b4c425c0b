"""Chat-templated text -> (prompt, response) in the reward model's own format. Pure: no torch, no HTTP.

RL trainers send what their policy saw and wrote: a conversation rendered with the policy's chat
template, the response at its end, often followed by EOS or pad tokens. The reward model was trained on
HH-style text ("\\n\\nHuman: ...\\n\\nAssistant:" + reply), and its tokenizer adds its own special tokens,
so the template's markers must not reach it (they would be counted twice: as template text and as
special tokens, and as words by the heuristics). `split_templated` therefore:
1. strips leading BOS markers and trailing EOS/pad markers (repeatedly: "Hi<|im_end|><|endoftext|>" -> "Hi");
2. cuts the text after the given templated prompt when the text starts with it, else after the last
   assistant header of a known template (ChatML, Llama 3, Gemma, Zephyr/Phi-3, HH "\\n\\nAssistant:");
3. renders the prompt's turns as "\\n\\nHuman: ...\\n\\nAssistant:" without template markers; text in no
   known template is kept as it is, less its BOS/EOS markers.
A text with no recognisable split gives an empty prompt; the caller decides what that means.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LEADING_MARKERS = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
TRAILING_MARKERS = (
    "</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<eos>",
    "<|end|>", "<|eot|>", "[PAD]", "<pad>", "<|pad|>", "[SEP]",
)  # fmt: skip
ROLE_LABELS = {
    "user": "Human",
    "human": "Human",
    "assistant": "Assistant",
    "model": "Assistant",
    "gpt": "Assistant",
}
HH_ASSISTANT = "\n\nAssistant:"


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    assistant_header: re.Pattern  # the text opening an assistant turn
    turn: re.Pattern  # one turn: group 1 the role, group 2 the content


def _template(name: str, assistant: str, turn: str) -> ChatTemplate:
    return ChatTemplate(name, re.compile(assistant), re.compile(turn, re.DOTALL))


TEMPLATES = (
    _template("chatml", r"<\|im_start\|>assistant\n?",
              r"<\|im_start\|>(\w+)\n?(.*?)(?:<\|im_end\|>|(?=<\|im_start\|>)|\Z)"),
    _template("llama3", r"<\|start_header_id\|>assistant<\|end_header_id\|>\s*",
              r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\s*(.*?)(?:<\|eot_id\|>|(?=<\|start_header_id\|>)|\Z)"),
    _template("gemma", r"<start_of_turn>model\n?",
              r"<start_of_turn>(\w+)\n?(.*?)(?:<end_of_turn>|(?=<start_of_turn>)|\Z)"),
    _template("zephyr", r"<\|assistant\|>\n?",
              r"<\|(system|user|assistant)\|>\n?(.*?)(?:</s>|<\|end\|>|(?=<\|(?:system|user|assistant)\|>)|\Z)"),
)  # fmt: skip


@dataclass(frozen=True)
class TextPair:
    prompt: str  # "" when the text could not be split
    response: str


def _run_of(markers: Sequence[str]) -> re.Pattern:
    """Any run of whitespace and `markers` at the start of a string (longest markers tried first)."""
    alternatives = "|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True))
    return re.compile(rf"(?:\s|{alternatives})*+")


# Stripping scans each end once with one regex (the trailing end on the reversed text), so a text made
# of markers costs linear time; removing one marker at a time copied the whole text per marker.
_LEADING_RUN = _run_of(LEADING_MARKERS)
_TRAILING_RUN_REVERSED = _run_of([m[::-1] for m in TRAILING_MARKERS])


def strip_markers(text: str) -> str:
    """Remove leading BOS and trailing EOS/pad markers (any number of them) and surrounding whitespace."""
    start = _LEADING_RUN.match(text).end()
    end = len(text) - _TRAILING_RUN_REVERSED.match(text[::-1]).end()
    return text[start:end] if start < end else ""


def message_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list of {"type", "text"} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    return str(content)


def render_messages(messages: Sequence[Mapping[str, Any]]) -> str:
    """A conversation [{"role", "content"}, ...] as an HH prompt ending with "\\n\\nAssistant:"."""
    turns = [
        (str(m.get("role", "user")), strip_markers(message_text(m.get("content", "")))) for m in messages
    ]
    return _render_turns(turns)


def _render_turns(turns: Sequence[tuple[str, str]]) -> str:
    rendered = "".join(
        f"\n\n{ROLE_LABELS.get(role, role.capitalize())}: {text}" for role, text in turns if text
    )
    return rendered + HH_ASSISTANT


def _detect(text: str) -> ChatTemplate | None:
    return next((t for t in TEMPLATES if t.assistant_header.search(text)), None)


def _clean_prompt(raw_prompt: str) -> str:
    template = _detect(raw_prompt)
    if template is None:
        plain = strip_markers(raw_prompt)
        return "\n\n" + plain if plain.startswith("Human:") else plain  # HH prompts open with a blank line
    turns = [(role.lower(), strip_markers(body)) for role, body in template.turn.findall(raw_prompt)]
    return _render_turns(turns)


def _cut_after_last_assistant_header(text: str) -> tuple[str, str]:
    template = _detect(text)
    if template is not None:
        cut = max(match.end() for match in template.assistant_header.finditer(text))
        return text[:cut], text[cut:]
    cut = text.rfind(HH_ASSISTANT)
    if cut >= 0:
        return text[: cut + len(HH_ASSISTANT)], text[cut + len(HH_ASSISTANT) :]
    return "", text


def split_templated(text: str, prompt: str | None = None) -> TextPair:
    """Split a templated prompt+response text; `prompt`, when given, is its templated prompt (a prefix)."""
    text = strip_markers(text)
    prefix = strip_markers(prompt) if prompt else ""
    if prefix and text.startswith(prefix):
        raw_prompt, raw_response = text[: len(prefix)], text[len(prefix) :]
    else:
        raw_prompt, raw_response = _cut_after_last_assistant_header(text)
    return TextPair(_clean_prompt(raw_prompt), strip_markers(raw_response))
