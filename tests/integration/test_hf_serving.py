"""Hugging Face reward models served by the real server on loopback: the reward it returns is the one
transformers computes, and hot swaps native -> Hugging Face -> native under load drop no request."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import torch

transformers = pytest.importorskip("transformers")

from app import random_hf_models as hf_models  # noqa: E402
from app.backends.warmup import forward_raw  # noqa: E402
from app.store import load_version, set_current  # noqa: E402
from app.training.import_model import import_model  # noqa: E402
from tests.conftest import publish_tiny_version, start_server  # noqa: E402
from tests.integration.test_reload_under_load import PROMPTS, RESPONSES, score_continuously  # noqa: E402

PAIRS = [hf_models.DATA / "alpaca_eval_sample.jsonl"]
CLIENTS = 6
JSON = {"content-type": "application/json"}
TRAFFIC_BETWEEN_SWAPS_S = 0.5


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    return hf_models.save_model(
        root / "qwen2", hf_models.decoder_config("qwen2"), hf_models.decoder_tokenizer()
    )


def transformers_rewards(source: Path, prompts: list[str], responses: list[str]) -> list[float]:
    model = transformers.AutoModelForSequenceClassification.from_pretrained(source).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    rewards = []
    for prompt, response in zip(prompts, responses, strict=True):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        with torch.no_grad():
            rewards.append(
                model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item()
            )
    return rewards


def expected_raw(store: Path, version: str) -> list[float]:
    loaded = load_version(store / version)
    loaded.backend.prepare(torch.float32, torch.device("cpu"))
    return forward_raw(loaded, PROMPTS, RESPONSES)


def test_the_served_reward_is_transformers_reward(qwen: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    import_model(qwen, store, PAIRS, version="qwen-v1", calibration_limit=16)
    prompts, responses = ["How do I boil an egg?", *PROMPTS], ["Eight minutes in boiling water.", *RESPONSES]
    with start_server(store, tmp_path) as server:
        items = [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]
        body = httpx.post(f"{server.url}/score_batch", json={"items": items}, timeout=30).json()
        single = httpx.post(f"{server.url}/score", json=items[0], timeout=30).json()
        info = httpx.get(f"{server.url}/v1/model", timeout=30).json()
        lone_surrogate = b'{"prompt": "hi", "response": "a \\ud800 b"}'  # valid JSON, not valid text
        broken = httpx.post(f"{server.url}/score", content=lone_surrogate, headers=JSON, timeout=30)
    served = [item["model_raw"] for item in body["items"]]
    assert served == pytest.approx(transformers_rewards(qwen, prompts, responses), abs=1e-5)
    assert single["model_raw"] == pytest.approx(served[0], abs=1e-6)
    assert body["model_version"] == "qwen-v1"
    assert info["architecture"]["backend"] == "hf" and info["architecture"]["model_type"] == "qwen2"
    assert broken.status_code == 422 and "response" in broken.json()["error"]["message"]


async def wait_until_live(client: httpx.AsyncClient, version: str) -> None:
    deadline = time.monotonic() + 60
    while (await client.get("/readyz")).json().get("model_version") != version:
        assert time.monotonic() < deadline, f"{version} did not go live within 60 s"
        await asyncio.sleep(0.05)


async def swap_under_load(url: str, store: Path, qwen: Path) -> tuple[list, list]:
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        clients = [asyncio.create_task(score_continuously(client, i, stop)) for i in range(CLIENTS)]
        try:
            await asyncio.sleep(TRAFFIC_BETWEEN_SWAPS_S)
            await asyncio.to_thread(import_model, qwen, store, PAIRS, "qwen-v1", calibration_limit=16)
            await wait_until_live(client, "qwen-v1")
            await asyncio.sleep(TRAFFIC_BETWEEN_SWAPS_S)
            set_current(store, "native-1")
            await wait_until_live(client, "native-1")
            await asyncio.sleep(TRAFFIC_BETWEEN_SWAPS_S)
        finally:
            stop.set()
            results = await asyncio.gather(*clients)
    return [s for scored, _ in results for s in scored], [f for _, failures in results for f in failures]


def test_native_to_hf_to_native_under_load_drops_no_request(qwen: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    publish_tiny_version(store, "native-1", seed=1)
    with start_server(store, tmp_path, env={"REWARD_RELOAD_INTERVAL": "0.1"}) as server:
        scored, failures = asyncio.run(swap_under_load(server.url, store, qwen))
    assert failures == []
    versions = [s.version for s in scored]
    assert {"native-1", "qwen-v1"} == set(versions)
    assert versions.index("qwen-v1") < len(versions) - 1 - versions[::-1].index("native-1")  # back to native
    expected = {version: expected_raw(store, version) for version in ("native-1", "qwen-v1")}
    for s in scored:  # every reward is the one its named version computes
        assert s.model_raw == pytest.approx([expected[s.version][p] for p in s.pair_indices], abs=1e-5), s
