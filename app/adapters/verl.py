"""verl custom reward function backed by the reward service.

verl's reward loop (the default in 0.8, the only path in 0.9.1) scores one sample at a time with its
`naive` reward manager, which calls `compute_score(data_source=, solution_str=, ground_truth=,
extra_info=)` from a thread, many at once. Point verl at this file and configure the service with
environment variables (verl 0.9.1 keys; 0.8 has them without the `reward.` prefix):

    REWARD_SERVICE_URL=http://rm-0:8000,http://rm-1:8000 REWARD_SERVICE_NAMESPACE=run-7 \
    python -m verl.trainer.main_ppo reward.custom_reward_function.path=app/adapters/verl.py \
        reward.custom_reward_function.name=compute_score ...

Options may also come from `custom_reward_function.reward_kwargs` (namespace, alpha, beta, normalize,
clip, url), which win over the environment; they are not in verl's config schema, so Hydra needs a `+`:
`+reward.custom_reward_function.reward_kwargs.namespace=run-7`. verl passes only the decoded response, so
the prompt is read from the sample's `extra_info` ("prompt", else "question"): put it there when preparing
the dataset. A failure raises: verl has no way to skip a reward. `compute_score_batch` serves verl's
legacy `batch` reward manager (verl < 0.8, outside the reward loop).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from app.adapters.conversations import to_pairs
from app.client import RewardClient

CLIENT_KWARGS = ("namespace", "alpha", "beta", "normalize", "clip")
PROMPT_KEYS = ("prompt", "question")


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping | None = None, **kwargs: Any
) -> float:
    """The service's reward of one decoded response (verl's per-sample reward managers call this)."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping | None],
    **kwargs: Any,
) -> list[float]:
    """Rewards of a batch in input order (the legacy `batch` reward manager of verl < 0.8 calls this)."""
    prompts = [prompt_of(info, index) for index, info in enumerate(extra_infos)]
    rewards = client_for(**{k: kwargs.get(k) for k in ("url", *CLIENT_KWARGS)}).score_batch(
        *to_pairs(prompts, solution_strs)
    )
    return [float(reward) for reward in rewards]  # on_error is "raise": every reward is a float


def prompt_of(extra_info: Mapping | None, index: int) -> Any:
    for key in PROMPT_KEYS:
        if extra_info and extra_info.get(key):
            return extra_info[key]
    raise ValueError(
        f"sample {index}: no prompt in extra_info (looked for {PROMPT_KEYS}); verl passes only the response, "
        "so add the prompt (text or chat messages) to extra_info when preparing the dataset"
    )


@lru_cache(maxsize=8)
def client_for(url: str | None = None, **options: Any) -> RewardClient:
    """One pooled client per process and configuration, built on first use (after any fork)."""
    urls = [u.strip() for u in url.split(",")] if url else None
    return RewardClient.from_env(base_urls=urls, on_error="raise", **options)
