"""The verl custom reward module against the real server, configured the way verl users do: by env vars."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.adapters import verl

QUESTIONS = ["how do i boil an egg", "what is a good song for guitar"]
ANSWERS = ["put the egg in boiling water for eight minutes<|im_end|>", "a short song with three chords</s>"]
HH_PROMPTS = [f"\n\nHuman: {q}\n\nAssistant:" for q in QUESTIONS]


@pytest.fixture
def service_env(server_url: str, monkeypatch) -> Iterator[str]:
    monkeypatch.setenv("REWARD_SERVICE_URL", server_url)
    verl.client_for.cache_clear()
    yield server_url
    verl.client_for.cache_clear()


def test_compute_score_gives_the_service_reward_of_each_sample(service_env: str):
    items = [{"prompt": p, "response": a.split("<")[0]} for p, a in zip(HH_PROMPTS, ANSWERS, strict=True)]
    expected = httpx.post(f"{service_env}/score_batch", json={"items": items}, timeout=60).json()["rewards"]
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    singles = [
        verl.compute_score("hh", answer, None, {"prompt": conversation})
        for answer, conversation in zip(ANSWERS, conversations, strict=True)
    ]
    batch = verl.compute_score_batch(["hh"] * 2, ANSWERS, [None] * 2, [{"question": p} for p in HH_PROMPTS])
    assert singles == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert batch == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_reward_kwargs_pass_scoring_options_through(service_env: str):
    reward = verl.compute_score(
        "hh", ANSWERS[0], None, {"prompt": HH_PROMPTS[0]}, clip=0.01, namespace="verl-1"
    )
    assert -0.01 <= reward <= 0.01


def test_an_empty_generation_gets_a_float_reward(service_env: str):
    """verl cannot skip a reward, so a response that is only an end marker must be scored, not refused."""
    expected = httpx.post(
        f"{service_env}/score", json={"prompt": HH_PROMPTS[0], "response": ""}, timeout=60
    ).json()["reward"]
    assert verl.compute_score("hh", "<|im_end|>", None, {"prompt": HH_PROMPTS[0]}) == pytest.approx(
        expected, rel=1e-5, abs=1e-6
    )
