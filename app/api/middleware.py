"""Every middleware, pure ASGI (no BaseHTTPMiddleware, so client disconnects still reach the routes).

From the outside in (as create_app installs them):
- `MetricsMiddleware` counts and times every HTTP request, by route template and status;
- `RequestIdMiddleware` echoes a sane X-Request-ID or makes one;
- `HardeningMiddleware`:
  - a request declaring a non-JSON body (form, text, XML...) is refused with 415 before it is read;
  - a body still arriving `body_timeout_s` after the request started is refused with 408, so a client that
    trickles its body (slow loris) holds a connection for a bounded time and never reaches the queue;
  - every response carries `nosniff`, `DENY` framing, `no-referrer` and `no-store` headers;
  - the request's id (from `scope["state"]["request_id"]`, set by the request-id middleware outside this
    one) is put in `request_id_var`, which `RequestIdFilter` (app/logs.py) writes on every log record;
- `BodySizeLimitMiddleware` refuses bodies over the limit (413);
- `CanonicalPathMiddleware` refuses disguised paths (400);
- `UnexpectedErrorMiddleware` answers an unexpected exception with the JSON 500;
- innermost, `DirectRoutes` (app/api/direct_routes.py) serves the scoring and trainer routes' POSTs itself.
"""

from __future__ import annotations

import asyncio
import email.message
import functools
import re
import time
import uuid
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.error_handlers import error_response, log_unexpected, unexpected_error_response
from app.logs import NO_REQUEST, request_id_var
from app.metrics import ServiceMetrics

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# a percent-escape of a character that never needs one (RFC 3986 unreserved) or of a path separator
_DISGUISED_PATH_CHARACTER = re.compile(rb"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DdEeFf]|5[CcFf]|7[Ee])")

UNMATCHED = "unmatched"  # the endpoint label of paths no route serves, so scanners cannot add series
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)


class HttpMiddleware:
    """Pure ASGI middleware of HTTP requests: `handle` sees them; anything else (lifespan) passes through."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


def on_response_start(send: Send, observe: Callable[[Message], None]) -> Send:
    """`send` that shows the response's start message (status, headers) to `observe` before sending it."""

    async def observed_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            observe(message)
        await send(message)

    return observed_send


class BodyTooLarge(HTTPException):
    def __init__(self, message: str, details: list[dict]):
        super().__init__(413, message)
        self.details = details


class RequestIdMiddleware(HttpMiddleware):
    """Echo a sane incoming X-Request-ID or make one; it goes on every response and on scope["state"]."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        send = on_response_start(send, lambda start: start.setdefault("headers", []).append(header))
        await self.app(scope, receive, send)


class BodySizeLimitMiddleware(HttpMiddleware):
    """Refuse bodies over the limit before parsing: by Content-Length at once, else while streaming.

    The limit is `max_bytes`, or `route_max_bytes[path]` for a route with its own (a whole rollout)."""

    def __init__(self, app: ASGIApp, max_bytes: int, route_max_bytes: dict[str, int] | None = None):
        super().__init__(app)
        self.max_bytes = max_bytes
        self.route_max_bytes = route_max_bytes or {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.route_max_bytes.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self.too_large(limit)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # an HTTPException, because FastAPI turns other errors raised while reading into 400
                    raise BodyTooLarge(self.message(limit), self.details(limit))
            return message

        await self.app(scope, counting_receive, send)

    @staticmethod
    def message(limit: int) -> str:
        return f"request body larger than {limit} bytes (max_body_bytes, or the route's own limit)"

    @staticmethod
    def details(limit: int) -> list[dict]:
        return [{"loc": ["body"], "msg": "body too large", "limit": limit}]

    def too_large(self, limit: int) -> ASGIApp:
        return error_response(413, "payload_too_large", self.message(limit), self.details(limit))


class CanonicalPathMiddleware(HttpMiddleware):
    """Refuse (400) a path that percent-encodes a letter, digit, '-', '.', '_', '~', '/' or '\\'.

    The server decodes escapes before routing, so `/%61dmin/rollback` would reach `/admin/rollback`
    while a proxy rule on the raw path (`path_beg /admin/`) lets it through. No route of this service
    needs such an escape, so refusing them keeps the path a proxy sees and the route that runs the same.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path") or b""
        if _DISGUISED_PATH_CHARACTER.search(raw_path):
            response = error_response(
                400, "bad_request", "the path percent-encodes characters that must appear as they are",
                [{"loc": ["path"], "msg": "percent-encoded unreserved character or slash",
                  "got": raw_path.decode("latin-1")[:200]}],
            )  # fmt: skip
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class UnexpectedErrorMiddleware(HttpMiddleware):
    """Answer an unexpected exception with the JSON 500 and keep the connection open.

    Left to the outermost error handler, the exception would also be re-raised to the server, which logs
    its traceback again and closes the keep-alive connection. Here it is logged once (log_unexpected) and
    ends with the response. An error after the response started can only abort it: re-raised.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started: list[Message] = []  # the response's start message, once sent
        try:
            await self.app(scope, receive, on_response_start(send, started.append))
        except Exception as exc:
            if started:
                raise
            log_unexpected(scope.get("path", ""), exc)
            await unexpected_error_response()(scope, receive, send)


class BodyTimeout(HTTPException):
    """An HTTPException, because FastAPI turns other errors raised while reading a body into 400."""

    def __init__(self, limit_s: float):
        message = f"the request body did not arrive within body_timeout_s {limit_s:g} s"
        super().__init__(408, message, headers={"Connection": "close"})  # the rest of the body is unwanted
        self.details = [{"loc": ["body"], "msg": "body too slow", "limit": limit_s}]


async def within(receive: Receive, seconds: float) -> Message:
    """`receive()`, or asyncio.TimeoutError after `seconds`. asyncio.timeout (Python >= 3.11) runs it in
    the caller's task; wait_for would start a task for every message (tens of µs of CPU per request)."""
    if not hasattr(asyncio, "timeout"):
        return await asyncio.wait_for(receive(), seconds)
    async with asyncio.timeout(seconds):
        return await receive()


def with_body_deadline(receive: Receive, deadline: float, limit_s: float) -> Receive:
    """`receive` that raises BodyTimeout when the body is not complete by `deadline` (monotonic)."""
    body_done = False

    async def receive_before_deadline() -> Message:
        nonlocal body_done
        if body_done:  # later calls only wait for a disconnect: no limit
            return await receive()
        try:
            message = await within(receive, max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise BodyTimeout(limit_s) from None
        body_done = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return receive_before_deadline


@functools.lru_cache(maxsize=256)  # clients repeat their few content types; any other is parsed again
def is_json(content_type: str) -> bool:
    """A JSON media type, read as FastAPI reads it (email.message: a value it cannot parse, such as two
    types joined by a comma, is text/plain), so that what passes here is what FastAPI parses as JSON."""
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def unsupported_media_type(content_type: str) -> ASGIApp:
    return error_response(
        415, "unsupported_media_type", f"request bodies must be application/json, got {content_type!r}",
        [{"loc": ["header", "content-type"], "msg": "not JSON", "got": content_type}],
    )  # fmt: skip


class HardeningMiddleware(HttpMiddleware):
    def __init__(self, app: ASGIApp, body_timeout_s: float):
        super().__init__(app)
        self.body_timeout_s = body_timeout_s

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id_var.set(scope.get("state", {}).get("request_id", NO_REQUEST))  # one task per request
        send = on_response_start(send, lambda start: start.setdefault("headers", []).extend(SECURITY_HEADERS))
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        if content_type and not is_json(content_type):
            await unsupported_media_type(content_type)(scope, receive, send)
            return
        deadline = time.monotonic() + self.body_timeout_s
        receive = with_body_deadline(receive, deadline, self.body_timeout_s)
        await self.app(scope, receive, send)


class RouteTemplates:
    """Maps a request to its route template ("/v1/stats/{namespace}"), never the raw path, so the endpoint
    label stays bounded. Routed requests carry their route; answers given before routing (413 from the
    body limit) are matched against the documented paths."""

    def __init__(self) -> None:
        self._compiled: list[tuple[re.Pattern, str]] | None = None

    def endpoint_of(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None and hasattr(route, "path"):
            return route.path
        if self._compiled is None:  # the app's routes are complete by the first request
            self._compiled = [(compile_path(path)[0], path) for path in scope["app"].openapi()["paths"]]
        return next((path for regex, path in self._compiled if regex.match(scope["path"])), UNMATCHED)


class MetricsMiddleware(HttpMiddleware):
    """Requests by endpoint and status, latency by endpoint, requests in flight."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        super().__init__(app)
        self.metrics = metrics
        self.templates = RouteTemplates()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        starts: list[Message] = []  # the response's start message, once sent
        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, on_response_start(send, starts.append))
        finally:
            self.metrics.inflight.dec()
            status = starts[-1]["status"] if starts else 500  # 500: the app raised before answering
            self.metrics.observe_request(
                self.templates.endpoint_of(scope), status, time.perf_counter() - started
            )
