"""One client's input never hurts another: poison pills, failing items in a shared batch, admission by work.

In-process tests drive the real ScoringService on the tiny real checkpoint (so that a batch's members and
the items computed can be observed); HTTP tests send raw JSON (httpx cannot encode a lone surrogate) to
the real server beside concurrent innocent requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from app.admission import Admission, PairPayload, encode_request
from app.batcher import BatchPolicy, BatchReport, MicroBatcher
from app.config import Settings
from app.errors import InferenceError, InvalidInput, NotReady, Overloaded
from app.heuristics import HeuristicConfig
from app.normalize import RunningStats
from app.registry import ModelRegistry
from app.schemas import Pair, ScoreBatchRequest, ScoreOptions, ScoreRequest
from app.service import BatchScorer, ModelHealth, ScoringDefaults, ScoringService
from tests.conftest import RunningServer, sample_texts, start_server

INNOCENT = [Pair(prompt=text, response=text[::-1]) for text in sample_texts(7, seed=5)]


def build_service(store: Path, policy: BatchPolicy, reports: list[BatchReport]) -> ScoringService:
    registry = ModelRegistry(store, device="cpu", dtype="float32")
    registry.activate(registry.load())
    health = ModelHealth()
    batcher = MicroBatcher(BatchScorer(health), policy, reports.append, compute=registry.compute)
    admission = Admission(HeuristicConfig())
    stats = RunningStats(0.99, 1e-6, 16)
    return ScoringService(
        registry,
        batcher,
        admission,
        health,
        stats,
        ScoringDefaults.from_settings(Settings(unready_after_failures=2)),
    )


async def with_service(store: Path, scenario, policy: BatchPolicy | None = None):
    reports: list[BatchReport] = []
    service = build_service(store, policy or BatchPolicy(max_wait_s=0.2), reports)
    service.batcher.start()
    try:
        return await scenario(service, reports)
    finally:
        await service.batcher.stop()
        service.admission.close()
        service.registry.close()


def test_an_item_whose_forward_fails_fails_alone_and_its_batch_neighbours_get_their_rewards(
    tiny_model_store: Path,
) -> None:
    async def scenario(service: ScoringService, reports: list[BatchReport]):
        version = service.live_version()
        alone = [
            (await service.score([pair], ScoreOptions(), ScoreRequest.text_loc)).items[0].model_raw
            for pair in INNOCENT
        ]
        reports.clear()
        innocent = encode_request(version, INNOCENT, service.admission.heuristics, ScoreBatchRequest.text_loc)
        # token ids beyond the embedding table: the forward pass raises for any batch holding this item
        poison = PairPayload([1, 10**6, 2, 3], innocent[0].heuristic, version)
        payloads = [*innocent[:3], poison, *innocent[3:]]
        futures = service.batcher.submit(payloads, [len(p.ids) for p in payloads], group=id(version))
        results = await asyncio.gather(*futures, return_exceptions=True)
        return alone, results, list(reports), service.health.consecutive_failures

    alone, results, reports, model_failures = asyncio.run(with_service(tiny_model_store, scenario))
    assert [r.size for r in reports] == [len(INNOCENT) + 1]  # all shared one batch...
    assert reports[0].failed_items == 1  # ...of which only the poison failed
    poisoned = results.pop(3)
    assert isinstance(poisoned, InferenceError) and "failed for this item" in poisoned.message
    assert [r.model_raw for r in results] == pytest.approx(alone, abs=1e-4)
    assert model_failures == 0  # an input's failure is not the model's: readiness unaffected


def test_a_model_that_fails_its_canary_too_turns_readiness_off_until_it_serves_again(
    tiny_model_store: Path,
) -> None:
    async def scenario(service: ScoringService, _reports):
        weights = service.live_version().backend.model.embeddings.tokens.weight
        saved = weights.detach().clone()
        service.check_ready()
        with torch.no_grad():
            weights.fill_(float("nan"))  # every input, the canary's included, gives NaN
        for _ in range(2):
            with pytest.raises(InferenceError):
                await service.score(INNOCENT[:2], ScoreOptions(), ScoreBatchRequest.text_loc)
        with pytest.raises(NotReady, match="cannot serve"):
            service.check_ready()
        with torch.no_grad():
            weights.copy_(saved)
        await service.score(INNOCENT[:1], ScoreOptions(), ScoreRequest.text_loc)
        service.check_ready()

    asyncio.run(with_service(tiny_model_store, scenario))


def test_a_text_that_cannot_be_encoded_is_refused_at_admission_and_never_queued(
    tiny_model_store: Path,
) -> None:
    async def scenario(service: ScoringService, reports: list[BatchReport]):
        pairs = [*INNOCENT[:3], Pair(prompt="p", response="ok \ud800"), INNOCENT[3]]
        with pytest.raises(InvalidInput) as refused:
            await service.score(pairs, ScoreOptions(), ScoreBatchRequest.text_loc)
        return refused.value, reports

    refused, reports = asyncio.run(with_service(tiny_model_store, scenario))
    assert refused.details[0]["loc"] == ["body", "items", 3, "response"]
    assert "surrogate" in refused.message
    assert reports == []  # nothing of the request reached the batcher


def test_concurrent_long_batches_beyond_the_wait_limit_are_refused_before_they_are_queued(
    tiny_model_store: Path,
) -> None:
    long_items = [Pair(prompt=text * 20, response=text * 20) for text in sample_texts(64, seed=9)]

    async def scenario(service: ScoringService, reports: list[BatchReport]):
        await service.score(long_items, ScoreOptions(), ScoreBatchRequest.text_loc)  # measures tokens/s
        # a wait limit worth about 4 such requests (64 items of the tiny model's max_len, 64 tokens)
        limit_s = 4 * 64 * 64 / service.batcher.tokens_per_s
        service.batcher.policy = dataclasses.replace(service.batcher.policy, max_queue_wait_s=limit_s)
        reports.clear()
        gate = threading.Event()  # the compute thread is held, so nothing drains while requests arrive
        held = asyncio.ensure_future(service.registry.compute.run(gate.wait, 60))
        tasks = [
            asyncio.ensure_future(service.score(long_items, ScoreOptions(), ScoreBatchRequest.text_loc))
            for _ in range(24)
        ]
        while sum(t.done() for t in tasks) + service.batcher.backlog // (64 * 64) < len(tasks):
            await asyncio.sleep(0.01)  # each request is refused or queued (64 items x 64 tokens)
        gate.set()
        await held
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        return outcomes, sum(r.size for r in reports)

    policy = BatchPolicy(max_wait_s=0.002)
    outcomes, computed = asyncio.run(with_service(tiny_model_store, scenario, policy))
    served = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert len(served) + len(refused) == 24
    assert 0 < len(served) <= 5  # about the limit's worth (4 requests) and the one that crossed it
    assert computed == 64 * len(served)  # refused requests never reached the queue
    assert all("max_queue_wait_s" in o.message and o.retry_after >= 1 for o in refused)


# ---------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def isolation_server(
    tiny_model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = {"REWARD_MAX_WAIT_MS": "20", "REWARD_UNREADY_AFTER_FAILURES": "1"}
    with start_server(tiny_model_store, tmp_path_factory.mktemp("isolation"), env=env) as server:
        yield server


def raw_json(body: dict) -> bytes:
    """JSON with lone surrogates written as \\udXXX escapes, as an attacker's client sends them."""
    return json.dumps(body, ensure_ascii=True).encode()


HH = "\n\nHuman: {}\n\nAssistant: {}"
GOOD_ITEM, BAD_ITEM = {"prompt": "p", "response": "ok"}, {"prompt": "p", "response": "\udbff"}
# (path, body, loc of the field at fault) for every text field of every scoring endpoint
POISON_PILLS = [
    ("/score", {"prompt": "p", "response": "\ud800"}, ["body", "response"]),
    ("/score", {"prompt": "a\udc00b", "response": "r"}, ["body", "prompt"]),
    ("/score_batch", {"items": [GOOD_ITEM] * 3 + [BAD_ITEM]}, ["body", "items", 3, "response"]),
    ("/get_reward", {"query": [HH.format("hi", "fine"), HH.format("hi", "bad \ud800")]}, None),
    ("/get_reward", {"query": [HH.format("hi \udfff", "fine")]}, None),
    ("/get_reward", {"query": ["fine \ud800"], "prompts": ["hi"]}, None),
    ("/classify", {"input": HH.format("hi", "\ud800")}, None),
    ("/classify", {"input": [HH.format("hi", "fine"), HH.format("\udc00", "fine")]}, None),
]  # fmt: skip


def innocent_request(url: str, index: int) -> httpx.Response:
    pair = INNOCENT[index % len(INNOCENT)]
    if index % 3 == 0:
        return httpx.post(f"{url}/score", json=pair.model_dump(), timeout=60)
    if index % 3 == 1:
        return httpx.post(f"{url}/score_batch", json={"items": [pair.model_dump()] * 3}, timeout=60)
    return httpx.post(f"{url}/classify", json={"input": HH.format(pair.prompt, pair.response)}, timeout=60)


def poison_request(url: str, pill: tuple) -> httpx.Response:
    path, body, _ = pill
    return httpx.post(
        url + path, content=raw_json(body), headers={"content-type": "application/json"}, timeout=60
    )


def test_poison_pills_on_every_endpoint_are_422s_and_innocent_neighbours_all_succeed(
    isolation_server,
) -> None:
    url = isolation_server.url
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        innocent = [pool.submit(innocent_request, url, i) for i in range(48)]
        pills = [pool.submit(poison_request, url, pill) for pill in POISON_PILLS * 3]
        innocent_answers = [f.result() for f in innocent]
        pill_answers = [f.result() for f in pills]
    assert [a.status_code for a in innocent_answers] == [200] * len(innocent_answers)
    for answer, (path, _, loc) in zip(pill_answers, POISON_PILLS * 3, strict=True):
        assert answer.status_code == 422, (path, answer.text)
        error = answer.json()["error"]
        assert error["type"] == "validation_error"
        if loc is not None:
            assert error["details"][0]["loc"] == loc
    assert httpx.get(f"{url}/readyz").status_code == 200  # failing after 1 model failure, yet ready


def test_classify_usage_counts_the_tokens_the_model_read(isolation_server) -> None:
    text = HH.format("How do I boil an egg?", "Nine minutes in boiling water.")
    one = httpx.post(f"{isolation_server.url}/classify", json={"input": text}, timeout=30).json()
    two = httpx.post(f"{isolation_server.url}/classify", json={"input": [text, text]}, timeout=30).json()
    assert one["usage"]["prompt_tokens"] > 3
    assert two["usage"]["prompt_tokens"] == 2 * one["usage"]["prompt_tokens"]
    assert math.isclose(one["data"][0]["probs"][0], two["data"][1]["probs"][0], abs_tol=1e-5)
