"""The real server on CUDA (REWARD_DEVICE=cuda, default dtype) against the default model: the answers
match the float32 CPU model within the half-precision tolerance, and every half dtype passes warm-up."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from app.backends.devices import resolve_dtype
from app.backends.warmup import forward_raw
from app.registry import ModelRegistry
from app.store import load_version, read_current
from tests.conftest import REPO

STORE = REPO / "model_store"
HALF_TOLERANCE_STD = 0.04  # of reward_std, as tests/integration/test_dtype.py holds CPU bfloat16


def sample_items(count: int) -> list[dict]:
    rows = [
        json.loads(line) for line in (REPO / "data" / "hh_harmless_sample.jsonl").read_text().splitlines()
    ]
    rows = rows[:count]
    return [{"prompt": r["prompt"], "response": r[key]} for key in ("chosen", "rejected") for r in rows]


def test_the_server_scores_on_cuda_in_its_default_half_precision(server_factory) -> None:
    items = sample_items(32)
    cpu = load_version(STORE / read_current(STORE))
    reference = forward_raw(cpu, [i["prompt"] for i in items], [i["response"] for i in items])
    tolerance = HALF_TOLERANCE_STD * cpu.calibration[1]
    env = {"REWARD_DEVICE": "cuda", "REWARD_DTYPE": "auto", "REWARD_RELOAD_INTERVAL": "0"}
    with server_factory(STORE, env=env) as server:
        model = httpx.get(f"{server.url}/v1/model").json()
        batch = httpx.post(f"{server.url}/score_batch", json={"items": items}, timeout=60).json()
        single = httpx.post(f"{server.url}/score", json=items[3], timeout=60).json()
    expected_dtype = str(resolve_dtype("auto", torch.device("cuda"))).removeprefix("torch.")
    assert model["dtype"] == expected_dtype != "float32"
    served = [item["model_raw"] for item in batch["items"]]
    assert served == pytest.approx(reference, abs=tolerance)
    assert single["model_raw"] == pytest.approx(served[3], abs=tolerance)  # alone vs in a batch


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_the_default_model_passes_warm_up_in_every_cuda_dtype(dtype: str) -> None:
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    registry = ModelRegistry(STORE, device="cuda", dtype=dtype)
    loaded = registry.load()  # warm-up: finite, and batched vs alone within 4 ulps of the dtype
    assert next(loaded.model.encoder.parameters()).dtype == getattr(torch, dtype)
    assert next(loaded.model.head.parameters()).dtype == torch.float32
    assert next(loaded.model.parameters()).device.type == "cuda"
    if dtype == "float32":
        assert torch.backends.cuda.matmul.allow_tf32, "float32 on CUDA computes matmuls in TF32"
    registry.close()
