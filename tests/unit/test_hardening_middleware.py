"""HardeningMiddleware and the request-id log filter, driven in-process with plain ASGI messages."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from app.api.middleware import BodyTimeout, HardeningMiddleware, is_json
from app.logs import RequestIdFilter, logging_config, request_id_var


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [("application/json", True), ("application/json; charset=utf-8", True), ("APPLICATION/JSON", True),
     ("application/problem+json", True), ("text/plain", False), ("application/x-www-form-urlencoded", False),
     ("multipart/form-data; boundary=x", False), ("text/json", False), ("application/jsonp", False),
     ("application/json, application/json", False), ("application//json", False), ("", False)],
)  # fmt: skip
def test_only_json_media_types_count_as_json(content_type: str, expected: bool) -> None:
    assert is_json(content_type) is expected


class Recorder:
    """An ASGI app that reads the whole body, and a `send` that keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.body = b""
        self.request_id_seen = ""

    async def app(self, scope: dict, receive, send) -> None:
        self.request_id_seen = request_id_var.get()
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(self, message: dict) -> None:
        self.sent.append(message)


def http_scope(content_type: bytes = b"application/json") -> dict:
    return {"type": "http", "method": "POST", "path": "/score", "headers": [(b"content-type", content_type)],
            "state": {"request_id": "req-7"}}  # fmt: skip


def body_messages(*chunks: bytes, pause_s: float = 0.0):
    last = len(chunks) - 1
    queue = [{"type": "http.request", "body": c, "more_body": i < last} for i, c in enumerate(chunks)]

    async def receive() -> dict:
        await asyncio.sleep(pause_s)
        return queue.pop(0)

    return receive


def run(recorder: Recorder, body_timeout_s: float, scope: dict, receive) -> None:
    asyncio.run(HardeningMiddleware(recorder.app, body_timeout_s)(scope, receive, recorder.send))


def test_a_json_body_passes_with_security_headers_and_the_request_id_in_context() -> None:
    recorder = Recorder()
    run(recorder, 5, http_scope(), body_messages(b'{"a":', b"1}"))
    assert recorder.body == b'{"a":1}'
    assert recorder.request_id_seen == "req-7"
    headers = dict(recorder.sent[0]["headers"])
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"cache-control"] == b"no-store"


def test_a_body_slower_than_the_limit_raises_body_timeout() -> None:
    recorder = Recorder()
    with pytest.raises(BodyTimeout) as raised:
        run(recorder, 0.05, http_scope(), body_messages(b"{", b"}", pause_s=0.04))
    assert raised.value.status_code == 408
    assert raised.value.headers == {"Connection": "close"}


def test_a_non_json_body_gets_415_in_the_error_shape_without_reaching_the_app() -> None:
    recorder = Recorder()
    run(recorder, 5, http_scope(b"text/plain"), body_messages(b"hi"))
    assert recorder.request_id_seen == ""
    start, body = recorder.sent
    assert start["status"] == 415
    assert json.loads(body["body"])["error"]["type"] == "unsupported_media_type"


def test_log_records_carry_the_current_request_id() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "message", None, None)
    token = request_id_var.set("req-42")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id_var.reset(token)
    assert record.request_id == "req-42"
    RequestIdFilter().filter(record)
    assert record.request_id == "-"
    assert "%(request_id)s" in logging_config("info")["formatters"]["default"]["format"]
