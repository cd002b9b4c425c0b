"""TRL reward functions backed by the reward service.

    from app.adapters.trl import as_trl_reward_func
    trainer = GRPOTrainer(model=..., reward_funcs=as_trl_reward_func("http://rm:8000"), ...)

The callable has GRPOTrainer's reward-function signature `(prompts, completions, **kwargs)` and accepts
the standard (strings) and conversational (lists of {"role", "content"}) formats. With the default
on_error="raise" a failed request stops training with the service's error; with on_error="none" the
pairs it hit get None, which TRL treats as a missing reward (NaN), never as 0.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from app.adapters.conversations import to_pairs
from app.client import AsyncRewardClient, RewardClient

RewardList = list[float | None]


def as_trl_reward_func(
    base_urls: str | Sequence[str] | None = None,
    *,
    client: RewardClient | None = None,
    name: str = "reward_service",
    **client_options: Any,
) -> Callable[..., RewardList]:
    """A synchronous TRL reward function. Without base_urls or client, REWARD_SERVICE_URL configures it.

    client_options go to RewardClient (namespace, alpha, beta, normalize, clip, on_error, chunk_size, ...).
    """
    client = client or RewardClient.from_env(base_urls=base_urls, **client_options)

    def reward_func(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> RewardList:
        return client.score_batch(*to_pairs(prompts, completions))

    return _named(reward_func, name, client)


def as_async_trl_reward_func(
    base_urls: str | Sequence[str] | None = None,
    *,
    client: AsyncRewardClient | None = None,
    name: str = "reward_service",
    **client_options: Any,
) -> Callable[..., Awaitable[RewardList]]:
    """An `async def` TRL reward function (TRL runs it on its own event loop, alongside other async ones)."""
    client = client or AsyncRewardClient.from_env(base_urls=base_urls, **client_options)

    async def reward_func(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> RewardList:
        return await client.score_batch(*to_pairs(prompts, completions))

    return _named(reward_func, name, client)


def _named(func: Callable, name: str, client: RewardClient | AsyncRewardClient) -> Callable:
    # TRL logs each reward function's mean and std under its __name__
    func.__name__ = func.__qualname__ = name
    func.client = client  # type: ignore[attr-defined]  # so callers can close it when training ends
    return func
