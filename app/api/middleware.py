"""Pure ASGI middleware (no BaseHTTPMiddleware, so client disconnects still reach the routes)."""

from __future__ import annotations

import re
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response, log_unexpected, unexpected_error_response

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# a percent-escape of a character that never needs one (RFC 3986 unreserved) or of a path separator
_DISGUISED_PATH_CHARACTER = re.compile(rb"%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DdEeFf]|5[CcFf]|7[Ee])")


class BodyTooLarge(HTTPException):
    def __init__(self, message: str, details: list[dict]):
        super().__init__(413, message)
        self.details = details


class RequestIdMiddleware:
    """Echo a sane incoming X-Request-ID or make one; it goes on every response and on scope["state"]."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodySizeLimitMiddleware:
    """Refuse bodies over `max_bytes` before parsing: by Content-Length at once, else while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self.too_large()(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # an HTTPException, because FastAPI turns other errors raised while reading into 400
                    raise BodyTooLarge(self.message(), self.details())
            return message

        await self.app(scope, counting_receive, send)

    def message(self) -> str:
        return f"request body larger than max_body_bytes {self.max_bytes}"

    def details(self) -> list[dict]:
        return [{"loc": ["body"], "msg": "body too large", "limit": self.max_bytes}]

    def too_large(self) -> ASGIApp:
        return error_response(413, "payload_too_large", self.message(), self.details())


class CanonicalPathMiddleware:
    """Refuse (400) a path that percent-encodes a letter, digit, '-', '.', '_', '~', '/' or '\\'.

    The server decodes escapes before routing, so `/%61dmin/rollback` would reach `/admin/rollback`
    while a proxy rule on the raw path (`path_beg /admin/`) lets it through. No route of this service
    needs such an escape, so refusing them keeps the path a proxy sees and the route that runs the same.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path") or b""
        if scope["type"] == "http" and _DISGUISED_PATH_CHARACTER.search(raw_path):
            response = error_response(
                400, "bad_request", "the path percent-encodes characters that must appear as they are",
                [{"loc": ["path"], "msg": "percent-encoded unreserved character or slash",
                  "got": raw_path.decode("latin-1")[:200]}],
            )  # fmt: skip
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class UnexpectedErrorMiddleware:
    """Answer an unexpected exception with the JSON 500 and keep the connection open.

    Left to the outermost error handler, the exception would also be re-raised to the server, which logs
    its traceback again and closes the keep-alive connection. Here it is logged once (log_unexpected) and
    ends with the response. An error after the response started can only abort it: re-raised.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_note(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            if started:
                raise
            log_unexpected(scope.get("path", ""), exc)
            await unexpected_error_response()(scope, receive, send)
