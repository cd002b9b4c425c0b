"""Property-based fuzzing of every endpoint of the real server from its own OpenAPI schema (schemathesis).

Valid and invalid requests (positive and negative generation), admin endpoints included with the right
token: no answer is a 5xx, every error has the one JSON shape and a request id, and the server still
serves afterwards with no unhandled exception in its log. Bounded: MAX_EXAMPLES per operation,
derandomized so a failure reproduces.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from tests.conftest import RunningServer, start_server

MAX_EXAMPLES = 40
ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"REWARD_ADMIN_TOKEN": ADMIN_TOKEN, "REWARD_RELOAD_INTERVAL": "0", "REWARD_MAX_ITEMS": "32"}
    with start_server(tiny_model_store, tmp_path_factory.mktemp("fuzz"), env=env) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_server: RunningServer) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    schema.config.update(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, request_timeout=30)
    schema.config.generation.update(modes=list(GenerationMode), max_examples=MAX_EXAMPLES, deterministic=True)
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_5xx_and_every_error_has_the_one_shape(case: schemathesis.Case) -> None:
    response = case.call()
    where = f"{case.method} {case.path}"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
    assert response.headers.get("x-request-id")
    if response.status_code >= 400 and case.method != "HEAD":  # a HEAD answer has no body to check
        body = response.json()
        assert set(body) == {"error"}, body
        assert isinstance(body["error"]["type"], str) and body["error"]["type"]
        assert isinstance(body["error"]["message"], str)
        assert isinstance(body["error"]["details"], list)


def test_server_still_serves_after_fuzzing(fuzz_server: RunningServer) -> None:
    assert fuzz_server.process.poll() is None
    assert httpx.get(f"{fuzz_server.url}/readyz").status_code == 200
    pair = {"prompt": "How do I boil an egg?", "response": "Boil it for eight minutes."}
    assert httpx.post(f"{fuzz_server.url}/score", json=pair).status_code == 200
    assert "Traceback" not in fuzz_server.log()
