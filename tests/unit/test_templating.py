"""Chat-templated text is split into the HH-style prompt and the bare response the reward model expects."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.templating import (
    LEADING_MARKERS,
    TRAILING_MARKERS,
    TextPair,
    render_messages,
    split_templated,
    strip_markers,
)

HH_PROMPT = "\n\nHuman: What is 2+2?\n\nAssistant:"

CHATML_PROMPT = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
LLAMA3_PROMPT = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
GEMMA_PROMPT = "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
ZEPHYR_PROMPT = "<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n"


@pytest.mark.parametrize(
    ("prompt", "end"),
    [
        (CHATML_PROMPT, "<|im_end|>\n<|endoftext|>"),
        (LLAMA3_PROMPT, "<|eot_id|>"),
        (GEMMA_PROMPT, "<end_of_turn>\n<eos>"),
        (ZEPHYR_PROMPT, "</s>"),
        (HH_PROMPT, "</s>"),
    ],
    ids=["chatml", "llama3", "gemma", "zephyr", "hh"],
)
def test_each_template_splits_into_the_hh_prompt_and_the_bare_response(prompt, end):
    expected = TextPair(HH_PROMPT, "It is 4.")
    assert split_templated(prompt + "It is 4." + end) == expected
    assert split_templated(prompt + " It is 4." + end, prompt=prompt) == expected


def test_trailing_eos_and_pad_markers_are_all_stripped_but_inner_ones_kept():
    assert strip_markers("Done.</s>[PAD][PAD] <pad>") == "Done."
    assert strip_markers("<s>Use <s>old</s> tags<|endoftext|>") == "Use <s>old</s> tags"


def test_the_given_prompt_wins_over_template_detection():
    prompt = CHATML_PROMPT
    response = "Quoting a template: <|im_start|>assistant\nnot a turn"
    assert split_templated(prompt + response + "<|im_end|>", prompt=prompt).response == response


def test_a_prompt_that_is_not_a_prefix_falls_back_to_the_last_assistant_header():
    pair = split_templated(CHATML_PROMPT + "It is 4.<|im_end|>", prompt="something else entirely")
    assert pair == TextPair(HH_PROMPT, "It is 4.")


def test_multi_turn_conversations_keep_every_earlier_turn_without_markers():
    text = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nAnd 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>"
    )
    pair = split_templated(text)
    assert (
        pair.prompt
        == "\n\nSystem: Be brief.\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: And 2+2?\n\nAssistant:"
    )
    assert pair.response == "4"
    assert "<|" not in pair.prompt + pair.response


def test_plain_text_without_a_template_has_no_prompt():
    assert split_templated("just some words</s>") == TextPair("", "just some words")


def test_an_empty_response_stays_empty():
    assert split_templated(CHATML_PROMPT + "<|im_end|>").response == ""


def test_conversational_messages_render_as_an_hh_prompt():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}]},
    ]
    assert render_messages(messages) == "\n\nSystem: Be brief.\n\nHuman: What is 2+2?\n\nAssistant:"


def strip_markers_one_at_a_time(text: str) -> str:
    """The specification: strip whitespace, one leading and one trailing marker, until nothing changes."""
    previous = None
    while previous != text:
        previous = text
        text = text.strip()
        text = next((text[len(m) :] for m in LEADING_MARKERS if text.startswith(m)), text)
        text = next((text[: -len(m)] for m in TRAILING_MARKERS if text.endswith(m)), text)
    return text


MARKER_HEAVY = st.lists(
    st.sampled_from([*LEADING_MARKERS, *TRAILING_MARKERS, " ", "\n", "x", "<", ">", "s", "/", "|"]),
    max_size=12,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(MARKER_HEAVY)
def test_strip_markers_matches_removing_one_marker_at_a_time(text: str) -> None:
    assert strip_markers(text) == strip_markers_one_at_a_time(text)


def python_lines_run(fn, *args) -> int:
    """Python line events inside app/templating.py while `fn(*args)` runs (C-level work is not counted)."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename.endswith("templating.py"):
            count += event == "line"
            return tracer
        return None

    sys.settrace(tracer)
    try:
        fn(*args)
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize("marker", ["<s>", "</s>", " <pad> "])
def test_stripping_does_not_loop_once_per_marker(marker: str) -> None:
    # a text of N markers must cost one pass per end, not N passes each copying the text
    few = python_lines_run(strip_markers, marker * 10 + "hi" + marker * 10)
    many = python_lines_run(strip_markers, marker * 10_000 + "hi" + marker * 10_000)
    assert many == few
