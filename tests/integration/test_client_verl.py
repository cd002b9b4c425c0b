"""The verl custom reward module against the real server, configured the way verl users do: by env vars,
and called the way verl's reward loop calls it (its naive reward manager and `get_custom_reward_fn`,
reproduced from verl/experimental/reward_loop/reward_manager/naive.py and verl/trainer/ppo/reward.py:
importing verl itself needs Ray)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator
from functools import partial
from pathlib import Path

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


def call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):
    """verl/trainer/ppo/reward.py `_call_with_kwargs`: reward_kwargs win over the call's keywords."""
    merged_kwargs = {**kwargs, **extra_kwargs}
    return raw_fn(*args, **merged_kwargs)


def custom_reward_fn(reward_kwargs: dict):
    """verl's `get_custom_reward_fn`: the function loaded from its file path, wrapped with reward_kwargs."""
    spec = importlib.util.spec_from_file_location("custom_module", Path(verl.__file__))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return partial(call_with_kwargs, module.compute_score, reward_kwargs)


async def naive_run_single(compute_score, data_source, response_str, ground_truth, extra_info) -> dict:
    """The reward loop's NaiveRewardManager.run_single once the response is decoded: extra_info gains
    num_turns and rollout_reward_scores, a sync compute_score runs in the default executor by keyword."""
    extra_info["num_turns"] = None
    extra_info["rollout_reward_scores"] = {}
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(
        None,
        lambda: compute_score(
            data_source=data_source,
            solution_str=response_str,
            ground_truth=ground_truth,
            extra_info=extra_info,
        ),
    )
    score = result["score"] if isinstance(result, dict) else result
    return {"reward_score": score, "reward_extra_info": {"acc": score}}


def test_the_reward_loop_naive_manager_scores_every_sample(service_env: str):
    """verl's RewardLoopWorker.compute_score_batch: one task per sample, gathered."""
    compute_score = custom_reward_fn({"namespace": "verl-loop", "clip": 0.3})
    samples = [(i % 2, f"{ANSWERS[i % 2].split('<')[0]} ({i})") for i in range(32)]

    async def reward_loop() -> list[dict]:
        tasks = [
            naive_run_single(compute_score, "hh", response, None, {"prompt": HH_PROMPTS[q], "index": i})
            for i, (q, response) in enumerate(samples)
        ]
        return await asyncio.gather(*tasks)

    outputs = asyncio.run(reward_loop())
    items = [{"prompt": HH_PROMPTS[q], "response": response} for q, response in samples]
    expected = httpx.post(f"{service_env}/score_batch", json={"items": items, "clip": 0.3}, timeout=60).json()
    assert [o["reward_score"] for o in outputs] == pytest.approx(expected["rewards"], rel=1e-5, abs=1e-6)
    assert all(type(o["reward_score"]) is float for o in outputs)
    assert 0.3 in [abs(o["reward_score"]) for o in outputs]  # reward_kwargs (clip) reached the service
