"""How RL trainers call a reward server, reproduced from their own code (aiohttp swapped for httpx).

These are not clients to use: they are the trainers' request loops, kept faithful (retry count, sleeps,
which failures they retry, what they read from the answer) so that load tests and scripts/trainer_load.py
drive the service the way the trainers do.

- OpenRLHF >= 0.9.1: `openrlhf/utils/agent.py`, `SingleTurnAgentExecutor._fetch_rewards_via_http`: one
  sample per request, `ClientTimeout(total=180)`, `raise_for_status()`, any failure retried after a fixed
  `asyncio.sleep(1)`, 5 tries, Retry-After ignored. OpenRLHF <= 0.9.0 (`openrlhf/utils/remote_rm_utils.py`,
  `request_api_wrapper`) has the same loop with `requests`, for a whole rollout per request.
- verl (0.8, 0.9.1): `verl/experimental/reward_loop/reward_loop.py`, `RewardLoopWorker._post_request`:
  no timeout, a 4xx raised at once, a 5xx or connection error retried after `min(2**attempt, 30)` s, 16
  tries; `compute_score_disrm` reads `data[-1].probs[-1]` from `/classify` (vLLM) and
  `data[-1].embedding[-1]` from `/v1/embeddings` (SGLang).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)


@dataclass
class CallRecord:
    """What happened to one trainer call: the statuses of its attempts and the reward it got, if any."""

    statuses: list[int | str] = field(default_factory=list)  # HTTP status, or the transport error's name
    reward: float | None = None


async def openrlhf_post_request(
    client: httpx.AsyncClient, url: str, data: dict, record: CallRecord, try_max_times: int = 5
) -> dict:
    """OpenRLHF's `_post_request`: 5 tries, a fixed 1 s sleep after any failure, 180 s per attempt."""
    for _ in range(try_max_times):
        try:
            response = await client.post(url, json=data, timeout=180)
        except httpx.TransportError as e:  # aiohttp.ClientError, timeouts: retried
            record.statuses.append(type(e).__name__)
            log.info("Request error, please check: %s", e)
        else:
            record.statuses.append(response.status_code)
            if response.is_success:  # raise_for_status(): any status >= 400 is retried
                return response.json()
            log.info("Request error, please check: HTTP %d", response.status_code)
        await asyncio.sleep(1)
    raise RuntimeError(
        f"Request error for {try_max_times} times, returning None. Please check the API server."
    )


async def openrlhf_reward(client: httpx.AsyncClient, url: str, query: str, prompt: str) -> CallRecord:
    """One sample as OpenRLHF's single-turn executor scores it: `reward` stays None when the call fails
    (which then fails OpenRLHF's experience maker)."""
    record = CallRecord()
    payload = {"query": [query], "prompts": [prompt], "labels": [None]}
    try:
        answer = await openrlhf_post_request(client, url, payload, record)
    except RuntimeError:
        return record
    record.reward = answer.get("rewards")[0]
    return record


async def verl_post_request(
    client: httpx.AsyncClient, url: str, payload: dict, record: CallRecord, max_retries: int = 16
) -> dict:
    """verl's `_post_request`: a 4xx raised at once, anything else retried after min(2**attempt, 30) s."""
    last_exception: Exception | None = None
    for attempt in range(max_retries):
        try:
            response = await client.post(url, json=payload, timeout=None)
        except httpx.TransportError as e:
            record.statuses.append(type(e).__name__)
            last_exception = e
        else:
            record.statuses.append(response.status_code)
            if response.is_success:
                return response.json()
            error = httpx.HTTPStatusError(
                f"HTTP {response.status_code}", request=response.request, response=response
            )
            if 400 <= response.status_code < 500:  # "Do not retry on 4xx client errors"
                raise error
            last_exception = error
        if attempt < max_retries - 1:
            await asyncio.sleep(min(2**attempt, 30))
    raise last_exception or RuntimeError(f"Max retries ({max_retries}) reached for request to {url}.")


async def verl_reward(
    client: httpx.AsyncClient, base_url: str, text: str, engine: str = "vllm"
) -> CallRecord:
    """One sample as verl's `compute_score_disrm` scores it through a vLLM (/classify) or SGLang
    (/v1/embeddings) reward server; `reward` stays None when the call fails (verl's step then fails)."""
    record = CallRecord()
    try:
        if engine == "vllm":
            payload: dict[str, Any] = {"model": "reward-model", "input": text, "activation": False}
            output = await verl_post_request(client, f"{base_url}/classify", payload, record)
            record.reward = output["data"][-1]["probs"][-1]
        else:
            payload = {"model": "reward-model", "input": text}
            output = await verl_post_request(client, f"{base_url}/v1/embeddings", payload, record)
            record.reward = output["data"][-1]["embedding"][-1]
    except httpx.HTTPError:
        pass
    return record
