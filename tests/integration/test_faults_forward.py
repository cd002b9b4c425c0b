"""A forward pass that really fails: a checkpoint whose weights give NaN for inputs holding one token.

Such a model passes the warm-up (the canary inputs never hold that token), then fails in service for
the requests that do. Only those requests fail, with a 5xx that says why; the others in the same micro-
batch get their rewards, the worker keeps serving, and /readyz stays 200: the canary still scores, so
a client cannot take the replica out of its load balancer (a model that fails its canary too is tested
in test_isolation.py).
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
from pathlib import Path

import httpx
import pytest
import torch

from app.store import publish_version, save_checkpoint_files
from tests.conftest import (
    calibration_of,
    sample,
    sample_texts,
    scrape_metrics,
    start_server,
    tiny_model,
    tiny_tokenizer,
)

POISON_TOKEN = "Q"  # a byte token that neither the canary inputs nor the tiny sample texts contain
POISON_TEXT = "QQQ is what I say"
UNREADY_AFTER = 2
SHARING_ROUNDS = 5  # rounds of simultaneous requests at most, until one shares a micro-batch


@pytest.fixture(scope="module")
def poisoned_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose CURRENT gives NaN for any input containing POISON_TOKEN."""
    model, tokenizer = tiny_model(seed=3), tiny_tokenizer()
    metrics = calibration_of(model, tokenizer)
    poison_id = tokenizer.tokenizer.token_to_id(POISON_TOKEN)
    with torch.no_grad():
        model.embeddings.tokens.weight[poison_id] = float("nan")
    store = tmp_path_factory.mktemp("poisoned_store")
    write = lambda d: save_checkpoint_files(d, model, tokenizer, metrics)  # noqa: E731
    publish_version(store, write, version="poisoned-v1")
    return store


@pytest.fixture(scope="module")
def poisoned_server(poisoned_store: Path, tmp_path_factory: pytest.TempPathFactory):
    env = {"REWARD_MAX_WAIT_MS": "500", "REWARD_UNREADY_AFTER_FAILURES": str(UNREADY_AFTER)}
    with start_server(poisoned_store, tmp_path_factory.mktemp("poisoned"), env=env) as server:
        yield server


def batch_counters(url: str) -> tuple[float, float]:
    """Micro-batches run so far and the items they held, from /metrics."""
    samples = scrape_metrics(url)
    return sample(samples, "reward_batch_size_count"), sample(samples, "reward_batch_size_sum")


def score(url: str, prompt: str, response: str) -> httpx.Response:
    return httpx.post(f"{url}/score", json={"prompt": prompt, "response": response}, timeout=30)


def send_together(url: str, pairs: list[tuple[str, str]]) -> list[httpx.Response]:
    """POST each pair to /score from its own thread at the same moment: every client is connected
    before a barrier releases them all, so that making a client or a connection (milliseconds of
    CPU each) does not spread the arrivals out."""
    clients = [httpx.Client(base_url=url, timeout=30) for _ in pairs]
    try:
        for client in clients:
            client.get("/healthz").raise_for_status()  # opens the connection the POST will reuse
        barrier = threading.Barrier(len(pairs))

        def send(client: httpx.Client, pair: tuple[str, str]) -> httpx.Response:
            barrier.wait(timeout=30)
            return client.post("/score", json={"prompt": pair[0], "response": pair[1]})

        with concurrent.futures.ThreadPoolExecutor(len(pairs)) as pool:
            return list(pool.map(send, clients, pairs))
    finally:
        for client in clients:
            client.close()


def test_a_failing_item_fails_alone_and_its_batch_neighbours_get_rewards(poisoned_server) -> None:
    clean = sample_texts(6, seed=11)
    pairs = [(text, text) for text in clean] + [("hello", POISON_TEXT)]
    # A request that finds the compute thread idle and nothing else arriving runs at once, so on a loaded
    # machine a round may still run one request per batch; the outcomes are checked in every round, and
    # at least one round (of a bounded few) must have shared batches (tests/integration/test_isolation.py
    # shows, in process, the poisoned item sharing one batch with all of them and failing alone).
    for _ in range(SHARING_ROUNDS):
        url = poisoned_server.url
        before = batch_counters(url)
        answers = send_together(url, pairs)
        batches, items = (after - earlier for after, earlier in zip(batch_counters(url), before, strict=True))
        assert items == len(pairs)
        *clean_answers, poisoned = answers
        assert [a.status_code for a in clean_answers] == [200] * len(clean)
        assert all(math.isfinite(a.json()["reward"]) for a in clean_answers)
        assert poisoned.status_code == 500
        error = poisoned.json()["error"]
        assert error["type"] == "inference_error"
        assert "non-finite" in error["message"]
        if batches < len(pairs):
            break
    else:
        pytest.fail(f"the requests never shared a micro-batch in {SHARING_ROUNDS} rounds")


def test_a_whole_failing_batch_fails_its_request_and_the_worker_keeps_serving(poisoned_server) -> None:
    batch = {"items": [{"prompt": "hi", "response": POISON_TEXT}, {"prompt": POISON_TEXT, "response": "ok"}]}
    failed = httpx.post(f"{poisoned_server.url}/score_batch", json=batch, timeout=30)
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "inference_error"
    assert score(poisoned_server.url, "how do I boil an egg", "put it in boiling water").status_code == 200


def test_inputs_that_make_the_model_fail_never_turn_readiness_off(poisoned_server) -> None:
    """The canary still scores, so the failures are the inputs' (a client's), not the model's."""
    url = poisoned_server.url
    for _ in range(UNREADY_AFTER + 2):
        assert score(url, "hi", POISON_TEXT).status_code == 500
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert score(url, "how do I boil an egg", "put it in boiling water").status_code == 200
