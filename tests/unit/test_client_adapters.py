"""Trainer inputs (TRL standard and conversational, verl extra_info) become the pairs the service scores."""

from __future__ import annotations

import pytest

from app.adapters.conversations import to_pair, to_pairs
from app.adapters.trl import as_async_trl_reward_func, as_trl_reward_func
from app.adapters.verl import prompt_of
from app.templating import TextPair

HH_PROMPT = "\n\nHuman: What is 2+2?\n\nAssistant:"


def test_standard_format_keeps_a_plain_prompt_and_strips_the_completion_eos():
    assert to_pair("What is 2+2?", " It is 4.</s>") == TextPair("What is 2+2?", "It is 4.")


def test_standard_format_with_a_templated_prompt_is_split_without_markers():
    prompt = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert to_pair(prompt, "It is 4.<|im_end|>") == TextPair(HH_PROMPT, "It is 4.")


def test_conversational_format_renders_the_prompt_and_joins_assistant_messages():
    prompt = [{"role": "user", "content": "What is 2+2?"}]
    completion = [{"role": "assistant", "content": "It is 4."}]
    assert to_pair(prompt, completion) == TextPair(HH_PROMPT, "It is 4.")


def test_to_pairs_keeps_order_and_refuses_unequal_lengths():
    assert to_pairs(["a", "b"], ["x", "y"]) == (["a", "b"], ["x", "y"])
    with pytest.raises(ValueError):
        to_pairs(["a", "b"], ["x"])


def test_trl_reward_functions_carry_the_name_trl_logs_them_under():
    sync_func = as_trl_reward_func("http://127.0.0.1:9", name="rm_helpfulness")
    async_func = as_async_trl_reward_func("http://127.0.0.1:9")
    assert sync_func.__name__ == "rm_helpfulness" and async_func.__name__ == "reward_service"
    assert sync_func.client.base_urls == ["http://127.0.0.1:9"]
    sync_func.client.close()


def test_verl_reads_the_prompt_from_extra_info_and_says_how_to_fix_a_missing_one():
    assert prompt_of({"question": "q?"}, 0) == "q?"
    assert prompt_of({"prompt": "p", "question": "q"}, 0) == "p"
    with pytest.raises(ValueError, match="sample 3: no prompt in extra_info"):
        prompt_of({"answer": "4"}, 3)


def test_a_completion_message_with_no_content_counts_as_empty_text():
    """A tool-call-only assistant turn has `content: None`: it adds no text (not the word "None")."""
    prompt = [{"role": "user", "content": "What is 2+2?"}]
    tool_call = {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}
    assert to_pair(prompt, [tool_call]) == TextPair(HH_PROMPT, "")
    assert to_pair(prompt, [tool_call, {"role": "assistant", "content": "It is 4."}]) == TextPair(
        HH_PROMPT, "It is 4."
    )
    assert to_pair([*prompt, {"role": "assistant", "content": None}], "x") == TextPair(HH_PROMPT, "x")
