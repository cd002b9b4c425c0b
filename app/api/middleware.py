"""Pure ASGI middleware (no BaseHTTPMiddleware, so client disconnects still reach the routes)."""

from __future__ import annotations

import re
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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
    """Refuse bodies over the limit before parsing: by Content-Length at once, else while streaming.

    The limit is `max_bytes`, or `route_max_bytes[path]` for a route with its own (a whole rollout)."""

    def __init__(self, app: ASGIApp, max_bytes: int, route_max_bytes: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.route_max_bytes = route_max_bytes or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
