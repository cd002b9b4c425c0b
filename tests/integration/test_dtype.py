"""Serving precision: `REWARD_DTYPE=auto` picks bfloat16 only where the CPU has it natively, and the
shipped model served in bfloat16 keeps the float32 rewards within the tolerance docs/benchmarks.md states
and keeps every preference ordering of the sample data."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from app.errors import CheckpointError
from app.registry import cpu_has_native_bf16, forward_raw, resolve_dtype
from app.store import load_version, read_current
from tests.conftest import REPO

STORE = REPO / "model_store"
# |model_raw(bf16) - model_raw(fp32)| in units of the checkpoint's reward_std, i.e. on the standardized
# model_reward that enters the hybrid; measured max 0.028 of reward_std on 480 HH texts for both defaults
BF16_TOLERANCE_STD = 0.04


def test_auto_is_bfloat16_exactly_when_the_device_has_native_bf16() -> None:
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    cuda_half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_dtype("auto", torch.device("cuda")) == cuda_half
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(CheckpointError, match="float16 needs a CUDA device"):
        resolve_dtype("float16", torch.device("cpu"))


def sample_pairs(count: int) -> list[dict]:
    lines = (REPO / "data" / "hh_harmless_sample.jsonl").read_text().splitlines()[:count]
    return [json.loads(line) for line in lines]


def test_the_default_model_served_in_bfloat16_keeps_fp32_rewards_and_orderings(server_factory) -> None:
    rows = sample_pairs(24)
    prompts = [r["prompt"] for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    version = load_version(STORE / read_current(STORE))
    fp32 = forward_raw(version, prompts, responses)
    tolerance = BF16_TOLERANCE_STD * version.calibration[1]
    items = [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]
    with server_factory(STORE, env={"REWARD_DTYPE": "bfloat16", "REWARD_RELOAD_INTERVAL": "0"}) as server:
        assert httpx.get(f"{server.url}/v1/model").json()["dtype"] == "bfloat16"
        batch = httpx.post(f"{server.url}/score_batch", json={"items": items}, timeout=120).json()
        single = httpx.post(f"{server.url}/score", json=items[0], timeout=30).json()
    bf16 = [item["model_raw"] for item in batch["items"]]
    assert bf16 == pytest.approx(fp32, abs=tolerance)
    assert bf16 != fp32  # the server really computed in bfloat16 ...
    # ... but the float32 head keeps rewards continuous: not rounded to bf16 values, which would tie
    assert sum(torch.tensor(x).to(torch.bfloat16).item() != x for x in bf16) > len(bf16) // 2
    assert single["model_raw"] == pytest.approx(bf16[0], abs=tolerance)  # alone vs in a batch
    n = len(rows)
    clear = [i for i in range(n) if abs(fp32[i] - fp32[i + n]) > 2 * tolerance]
    assert clear, "the sample has pairs the model separates clearly"
    assert [bf16[i] > bf16[i + n] for i in clear] == [fp32[i] > fp32[i + n] for i in clear]
