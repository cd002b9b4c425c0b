"""Hardening around the app: bounded connections, JSON-only bodies, a time limit on bodies, security
headers, request ids in logs.

`bounded_h11(...)` is the HTTP protocol uvicorn runs (pure-Python h11; httptools, uvicorn's default when
installed, has no header size limit). It bounds what a client can hold before its request even starts:
- headers larger than `max_header_bytes` get 400 and the connection is closed (h11's event size limit);
- a connection whose request headers are not complete `header_timeout_s` after it opened (or after its
  previous response) is closed: idle and slowly trickled connections cannot pile up;
- beyond `max_connections` open connections, a new one gets 503 with `Connection: close` at once, so
  file descriptors stay bounded whatever the number of sockets a client opens.

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
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.api.errors import error_response

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)
NO_REQUEST = "-"  # the request id of log lines emitted outside any request (startup, batches, shutdown)

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default=NO_REQUEST)


TOO_MANY_CONNECTIONS_BODY = (
    b'{"error": {"type": "overloaded", "message": "too many open connections; retry later", "details": []}}'
)
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
    % (len(TOO_MANY_CONNECTIONS_BODY), TOO_MANY_CONNECTIONS_BODY)
)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers and a bound on open connections."""

    header_timeout_s = 10.0
    max_connections = 1024

    def __init__(self, *args: object, **kwargs: object):
        self._header_deadline: asyncio.TimerHandle | None = None
        super().__init__(*args, **kwargs)

    @property
    def cycle(self):  # noqa: ANN201 - uvicorn's RequestResponseCycle or None
        return self._cycle

    @cycle.setter
    def cycle(self, value) -> None:  # noqa: ANN001
        """uvicorn sets the cycle when a request's headers are complete: the deadline is met."""
        self._cycle = value
        if value is not None:
            self._cancel_header_deadline()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self._cycle is None or self._cycle.response_complete):
            self._arm_header_deadline()  # the next request's headers get the same time

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_late)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_late(self) -> None:
        self._header_deadline = None
        waiting = self._cycle is None or self._cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()


def bounded_h11(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """The protocol class uvicorn instantiates per connection, with these bounds."""
    bounds = {"header_timeout_s": header_timeout_s, "max_connections": max_connections}
    return type("BoundedH11Protocol", (BoundedH11Protocol,), bounds)


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
