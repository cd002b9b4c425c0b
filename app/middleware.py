"""Hardening around the app: JSON-only bodies, a time limit on bodies, security headers, request ids in logs.

`HardeningMiddleware` is pure ASGI (no BaseHTTPMiddleware, so disconnects still reach the routes):
- a request declaring a non-JSON body (form, text, XML...) is refused with 415 before it is read;
- a body still arriving `body_timeout_s` after the request started is refused with 408, so a client that
  trickles its body (slow loris) holds a connection for a bounded time and never reaches the queue;
- every response carries `nosniff`, `DENY` framing, `no-referrer` and `no-store` headers;
- the request's id (from `scope["state"]["request_id"]`, set by the request-id middleware outside this one)
  is put in `request_id_var`, which `RequestIdFilter` writes on every log record of the request.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
NO_REQUEST = "-"  # the request id of log lines emitted outside any request (startup, batches, shutdown)

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default=NO_REQUEST)


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id`: the id of the request being handled, '-' outside requests."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class BodyTimeout(HTTPException):
    """An HTTPException, because FastAPI turns other errors raised while reading a body into 400."""

    def __init__(self, limit_s: float):
        message = f"the request body did not arrive within body_timeout_s {limit_s:g} s"
        super().__init__(408, message, headers={"Connection": "close"})  # the rest of the body is unwanted
        self.details = [{"loc": ["body"], "msg": "body too slow", "limit": limit_s}]


def with_security_headers(send: Send) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message.setdefault("headers", []).extend(SECURITY_HEADERS)
        await send(message)

    return send_with_headers


def with_body_deadline(receive: Receive, deadline: float, limit_s: float) -> Receive:
    """`receive` that raises BodyTimeout when the body is not complete by `deadline` (monotonic)."""
    body_done = False

    async def receive_before_deadline() -> Message:
        nonlocal body_done
        if body_done:  # later calls only wait for a disconnect: no limit
            return await receive()
        try:
            message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise BodyTimeout(limit_s) from None
        body_done = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return receive_before_deadline


def is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type.startswith("application/") and media_type.endswith(("/json", "+json"))


def unsupported_media_type(content_type: str) -> ASGIApp:
    return error_response(
        415, "unsupported_media_type", f"request bodies must be application/json, got {content_type!r}",
        [{"loc": ["header", "content-type"], "msg": "not JSON", "got": content_type}],
    )  # fmt: skip


class HardeningMiddleware:
    def __init__(self, app: ASGIApp, body_timeout_s: float):
        self.app = app
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id_var.set(scope.get("state", {}).get("request_id", NO_REQUEST))  # one task per request
        send = with_security_headers(send)
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        if content_type and not is_json(content_type):
            await unsupported_media_type(content_type)(scope, receive, send)
            return
        deadline = time.monotonic() + self.body_timeout_s
        receive = with_body_deadline(receive, deadline, self.body_timeout_s)
        await self.app(scope, receive, send)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def logging_config(level: str) -> dict:
    """dictConfig for the app and uvicorn alike: one format with the request id on every line, to stderr."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": {"format": LOG_FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
    }
