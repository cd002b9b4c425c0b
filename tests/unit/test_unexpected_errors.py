"""An unexpected exception in a route ends as the JSON 500 inside the app: logged in one line (its
traceback once per raising line), never re-raised to the server, which would close the connection."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from fastapi import FastAPI

from app.api.error_handlers import install_error_handlers
from app.api.middleware import UnexpectedErrorMiddleware


def app_with_a_bug() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/bug")
    async def bug(secret: str = "") -> dict:
        raise ValueError(f"cannot handle {secret}" + "x" * 10_000)

    app.add_middleware(UnexpectedErrorMiddleware)
    return app


async def call_bug_three_times() -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app_with_a_bug(), raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return [await client.get("/bug", params={"secret": f"s{i}"}) for i in range(3)]


def test_an_unexpected_error_is_a_json_500_that_the_server_never_sees(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR)
    responses = asyncio.run(call_bug_three_times())  # raise_app_exceptions: a re-raise would fail here
    assert [r.status_code for r in responses] == [500, 500, 500]
    assert responses[0].json()["error"] == {
        "type": "internal_error", "message": "internal error; see the server log", "details": [],
        "code": 500, "param": None,
    }  # fmt: skip
    assert "connection" not in responses[0].headers
    records = [r for r in caplog.records if "unhandled ValueError on /bug" in r.getMessage()]
    assert len(records) == 3
    assert [r.exc_info is not None for r in records] == [True, False, False]  # one traceback, not one each
    assert all(len(r.getMessage()) < 400 for r in records)
