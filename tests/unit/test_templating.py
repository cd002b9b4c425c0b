"""Chat-templated text is split into the HH-style prompt and the bare response the reward model expects."""

from __future__ import annotations

import pytest

from app.templating import TextPair, render_messages, split_templated, strip_markers

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
