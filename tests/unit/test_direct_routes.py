"""The scoring routes served directly (app/api/direct_routes.py) answer exactly as FastAPI answers the same
routes: every status, header and JSON body of a corpus of good, bad and hostile requests is compared
between the app and the same app without DirectRoutes, both running the tiny model in this process."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Header, Request

from app.api.direct_routes import DirectRoute, DirectRoutes
from app.api.trainer_scoring import Options, query_options
from app.config import Settings
from app.main import create_app
from app.schemas import ScoreOptions, ScoreRequest, ScoreResponse

PAIR = {"prompt": "How do I boil an egg?", "response": "Put it in boiling water for eight minutes."}
OTHER = {"prompt": "What is rain?", "response": "Water falling from clouds."}
JSON = {"content-type": "application/json"}
CHAT = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
HH = "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for eight minutes."
HH_OTHER = "\n\nHuman: What is rain?\n\nAssistant: Water falling from clouds."


def body(value: object) -> bytes:
    return json.dumps(value).encode()


# (path, raw body, headers): each is sent to both apps in this order (running stats change alike)
CORPUS: list[tuple[str, bytes, dict[str, str]]] = [
    ("/score", body(PAIR), JSON),
    ("/score", body({**PAIR, "alpha": 0.2, "beta": 0.8, "clip": 0.5}), JSON),
    ("/score", body({**PAIR, "normalize": "running", "namespace": "run-1"}), JSON),
    ("/score", body({**PAIR, "normalize": "running", "namespace": "run-1"}), JSON),
    ("/score", body({"messages": CHAT}), JSON),
    ("/score_batch", body({"items": [PAIR, OTHER], "normalize": "batch"}), JSON),
    ("/score_batch", body({"items": [PAIR, {"messages": CHAT}]}), JSON),
    ("/score", body(PAIR), {"content-type": "application/vnd.reward+json; charset=utf-8"}),
    # bodies FastAPI refuses before the model: JSON, missing parts, wrong types, limits
    ("/score", b'{"prompt": "a", ', JSON),
    ("/score", b'{"prompt": "a", "response": "b"} trailing', JSON),
    ("/score", b"", JSON),
    ("/score", b"null", JSON),
    ("/score", b"[]", JSON),
    ("/score", b'"text"', JSON),
    ("/score", body(PAIR), {}),  # no content type: FastAPI does not read it as JSON
    ("/score", body(PAIR), {"content-type": "application/json, application/json"}),  # not a media type
    ("/score", body(PAIR), {"content-type": "application//json"}),
    ("/score", body({"prompt": "a"}), JSON),
    ("/score", body({**PAIR, "normalise": "batch"}), JSON),
    ("/score", body({"prompt": 5, "response": "b"}), JSON),
    ("/score", body({"prompt": "", "response": "b"}), JSON),
    ("/score", body({**PAIR, "alpha": 1.5}), JSON),
    ("/score", body({**PAIR, "alpha": 0, "beta": 0}), JSON),
    ("/score", body({**PAIR, "normalize": "sometimes"}), JSON),
    ("/score", body({**PAIR, "namespace": "no spaces"}), JSON),
    ("/score", body({**PAIR, "clip": 0}), JSON),
    ("/score", b'{"prompt": "a", "response": "b", "alpha": NaN}', JSON),
    ("/score", body({**PAIR, "messages": [{"role": "user", "content": "x"}]}), JSON),
    ("/score", b'{"prompt": "a", "response": "\\ud800"}', JSON),  # unpaired surrogate: refused at encoding
    ("/score", b"[" * 100_000 + b"]" * 100_000, JSON),  # deeper than the parser goes: 400
    ("/score", b'{"prompt": "\xff\xfe\xfd", "response": "b"}', JSON),  # not UTF-8
    ("/score", body({"prompt": "a" * 300, "response": "b"}), JSON),  # over max_text_chars
    ("/score_batch", body({"items": []}), JSON),
    ("/score_batch", body({"items": [PAIR] * 5}), JSON),  # over max_items
    ("/score_batch", body({"items": [PAIR, 3, {"prompt": "a"}]}), JSON),
    ("/score_batch", body({"items": "all"}), JSON),
    # the trainer routes: scoring options from the query string, errors of query and body together
    ("/get_reward", body({"query": [HH, HH_OTHER], "prompts": None}), JSON),
    ("/get_reward?namespace=run-2&normalize=running&clip=0.5", body({"query": [HH]}), JSON),
    ("/get_reward?alpha=0.5&alpha=0.9&unknown=1", body({"query": [HH]}), JSON),  # the last one counts
    ("/get_reward", body({"query": []}), JSON),
    ("/get_reward?alpha=abc&normalize=often", body({"query": [HH]}), JSON),
    ("/get_reward?alpha=0&beta=0", body({"query": [HH]}), JSON),  # refused by the dependency itself
    ("/get_reward?alpha=abc", body({"queries": [HH]}), JSON),  # query and body errors in one 422
    ("/get_reward?alpha=abc", b"{", JSON),  # invalid JSON is reported before the query
    ("/get_reward?alpha=abc", b"", JSON),
    ("/get_reward", body({"query": ["no turns in this text"]}), JSON),
    ("/get_reward", body({"query": [HH] * 5, "prompts": ["a"]}), JSON),
    ("/classify", body({"input": HH}), JSON),
    ("/v1/classify?normalize=batch", body({"input": [HH, HH_OTHER], "use_activation": False}), JSON),
    ("/classify", body({"messages": CHAT}), JSON),
    ("/classify", body({"input": [[1, 2, 3]]}), JSON),  # token ids
    ("/classify", body({"input": [HH] * 5}), JSON),  # over max_items
    ("/v1/embeddings", body({"input": [HH]}), JSON),
    ("/v1/embeddings?clip=-1", body({"input": HH}), JSON),
    ("/get_reward?alpha=&clip=inf&normalize=RUNNING", body({"query": [HH]}), JSON),
    ("/get_reward?namespace=run%2F1&normalize=batch&normalize=none", body({"query": [HH]}), JSON),
    ("/get_reward?alpha=2", b"null", JSON),
    ("/classify?alpha=2", body({"input": HH}), {}),  # no content type, and a bad option
    ("/classify?alpha=2", body({"input": HH, "messages": CHAT}), JSON),  # both forms, and a bad option
    # not a POST to the exact path: FastAPI's in both
    ("/score/", body(PAIR), JSON),
    ("/get_reward/", body({"query": [HH]}), JSON),
]
# answers that differ by nature from one call to the next: kept as the type of their value
VARYING = ("id", "created")


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        for _ in range(600):
            if app.state.registry.current is not None:
                break
            await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client


def settings_of(store: Path) -> Settings:
    return Settings(
        model_store=store, dtype="float32", torch_threads=1, reload_interval=0, stats_path=None,
        max_items=4, max_text_chars=200,
    )  # fmt: skip


def without_direct_routes(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not DirectRoutes]
    return app


def answer(response: httpx.Response) -> tuple[int, dict[str, str], object]:
    headers = {k: v for k, v in response.headers.items() if k != "content-length"}
    try:
        content: object = response.json()
    except ValueError:
        content = response.content
    if isinstance(content, dict):
        content = {k: type(v).__name__ if k in VARYING else v for k, v in content.items()}
    return response.status_code, headers, content


async def answers(app: FastAPI) -> list[tuple[int, dict[str, str], object]]:
    async with running(app) as client:
        results = []
        for i, (path, raw, headers) in enumerate(CORPUS):
            sent = {**headers, "x-request-id": f"req-{i}"}
            results.append(answer(await client.post(path, content=raw, headers=sent)))
        results.append(answer(await client.get("/score", headers={"x-request-id": "get"})))
        return results


def test_direct_routes_answer_every_request_as_fastapi_does(tiny_model_store: Path) -> None:
    direct = asyncio.run(answers(create_app(settings_of(tiny_model_store))))
    standard = asyncio.run(answers(without_direct_routes(create_app(settings_of(tiny_model_store)))))
    statuses = [status for status, _, _ in direct]
    assert statuses.count(200) == 16 and {400, 405, 415, 422, 307} <= set(statuses)  # the corpus covers them
    for case, (got, expected) in enumerate(zip(direct, standard, strict=True)):
        assert got == expected, (case, CORPUS[case][:2] if case < len(CORPUS) else "GET /score")


def test_metrics_label_directly_served_requests_by_their_route(tiny_model_store: Path) -> None:
    async def scrape() -> str:
        async with running(create_app(settings_of(tiny_model_store))) as client:
            await client.post("/score", json=PAIR)
            await client.post("/score_batch", json={"items": [PAIR]})
            await client.post("/v1/classify", json={"input": HH})
            return (await client.get("/metrics")).text

    text = asyncio.run(scrape())
    for route in ("/score", "/score_batch", "/v1/classify"):
        assert f'reward_requests_total{{endpoint="{route}",status="200"}} 1.0' in text


# routes DirectRoute must refuse (FastAPI would resolve or apply something it does not), and two it serves
ROUTES = APIRouter()


@ROUTES.post("/with-query", response_model=ScoreResponse)
async def with_query(body: ScoreRequest, request: Request, namespace: str = "default") -> dict:
    return {}


@ROUTES.post("/with-tasks", response_model=ScoreResponse)
async def with_tasks(body: ScoreRequest, tasks: BackgroundTasks) -> dict:
    return {}


@ROUTES.post("/without-none", response_model=ScoreResponse, response_model_exclude_none=True)
async def without_none(body: ScoreRequest) -> dict:
    return {}


def sync_options(alpha: float = 0.5) -> float:
    return alpha


async def header_options(x_alpha: Annotated[float, Header()] = 0.5) -> float:
    return x_alpha


@ROUTES.post("/sync-dependency", response_model=ScoreResponse)
async def sync_dependency(body: ScoreRequest, alpha: Annotated[float, Depends(sync_options)]) -> dict:
    return {}


@ROUTES.post("/header-dependency", response_model=ScoreResponse)
async def header_dependency(body: ScoreRequest, alpha: Annotated[float, Depends(header_options)]) -> dict:
    return {}


@ROUTES.post("/plain", response_model=ScoreResponse)
async def plain(body: ScoreRequest, request: Request) -> dict:
    return {}


@ROUTES.post("/query-dependency", response_model=ScoreResponse)
async def query_dependency(body: ScoreRequest, options: Options) -> dict:
    return {}


@pytest.mark.parametrize("route", ROUTES.routes, ids=lambda route: route.path)
def test_only_routes_with_a_body_the_request_and_query_dependencies_are_served_directly(route) -> None:
    if route.path in ("/plain", "/query-dependency"):
        assert DirectRoute(route).body_name == "body"
    else:
        with pytest.raises(ValueError, match="cannot be served directly"):
            DirectRoute(route)


def test_requests_go_to_fastapi_while_the_app_overrides_a_dependency(tiny_model_store: Path) -> None:
    async def fixed_options() -> ScoreOptions:
        return ScoreOptions(normalize="batch")

    async def reward_of_a_bad_query() -> httpx.Response:
        app = create_app(settings_of(tiny_model_store))
        app.dependency_overrides[query_options] = fixed_options
        async with running(app) as client:
            return await client.post("/get_reward?alpha=abc", json={"query": [HH, HH_OTHER]})

    response = asyncio.run(reward_of_a_bad_query())
    assert response.status_code == 200  # the override, which reads no query, answered
    assert sum(response.json()["rewards"]) == pytest.approx(0.0, abs=1e-6)  # normalized in the batch
