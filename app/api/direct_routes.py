"""The scoring routes' POSTs served directly, past FastAPI's routing, dependency and response layers.

A trainer calls /score thousands of times a minute, and each call's HTTP work runs on the event loop, on
the same cores as the forward passes. FastAPI's per-request machinery (its exception, body-limit and
telemetry middleware, the router, dependency solving, response validation) costs about 200 µs of CPU
per request there, more than the route's own work. `DirectRoutes` serves the POSTs of the routes given
to it with only what they need:

- read the body (through the middleware outside, which bounds its size and time);
- parse and validate it as FastAPI does: JSON only for a JSON content type, the same errors, with the
  same locations, for invalid JSON, a missing body and each invalid field;
- call the route's own endpoint function with the validated body and the request;
- answer with the response model's JSON (validated and dumped as FastAPI does), or the Response the
  endpoint returned;
- turn an exception into the response of the app's handler for it, as FastAPI's exception middleware
  does; an exception without one goes on to the unexpected-error middleware outside.

One answer differs, on purpose: a client that disconnects while sending its body is counted as 499,
like one that disconnects while its rewards are computed (FastAPI answers it 400, which nobody reads).

The routes stay declared on their FastAPI router: the OpenAPI document, other methods (405), trailing-slash
redirects and anything else not a POST to the exact path are FastAPI's as before. A route served here may
take only a JSON body and the request, and its router must be included without a prefix or dependencies:
dependencies, parameters and response options are FastAPI's to apply, so a route with any is refused
when the app is built.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi.datastructures import DefaultPlaceholder
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.cancellation import CLIENT_CLOSED
from app.api.middleware import HttpMiddleware, is_json


class ClientDisconnected(Exception):
    """The client went away while sending its body."""


class DirectRoute:
    """One POST route of a FastAPI router, served without FastAPI's per-request layers."""

    def __init__(self, route: APIRoute):
        dependant = route.dependant
        if len(dependant.body_params) != 1 or route.response_model is None or any(unserved(route)):
            raise ValueError(
                f"route {route.path} cannot be served directly: it must take one JSON body (and the "
                "request), no dependencies or other parameters, and declare its response model with no "
                "response options"
            )
        body = dependant.body_params[0]
        self.route = route
        self.body_name = body.name
        self.request_name = dependant.request_param_name
        self.body_adapter: TypeAdapter = TypeAdapter(body.field_info.annotation)
        self.response_adapter: TypeAdapter = TypeAdapter(route.response_model)
        self.status_code = route.status_code or 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # as the router sets it: the metrics label the route by its template
        request = Request(scope, receive, send)
        try:
            body = self.validated(await read_body(receive), request.headers.get("content-type"))
            arguments = {self.body_name: body}
            if self.request_name:
                arguments[self.request_name] = request
            result = await self.route.endpoint(**arguments)
            response = result if isinstance(result, Response) else self.json_response(result)
        except ClientDisconnected:
            response = Response(status_code=CLIENT_CLOSED)
        except Exception as exc:
            handler = handler_of(scope["app"].exception_handlers, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def validated(self, raw: bytes, content_type: str | None) -> Any:
        """The body as FastAPI reads it: JSON for a JSON content type, else the bytes themselves (which no
        model accepts); errors located under "body"."""
        if not raw:
            raise RequestValidationError(
                [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
            )
        value = parse_json(raw) if is_json(content_type or "") else raw
        try:
            return self.body_adapter.validate_python(value, from_attributes=True)
        except ValidationError as exc:
            errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
            raise RequestValidationError(errors, body=value) from None

    def json_response(self, result: Any) -> Response:
        adapter = self.response_adapter
        content = adapter.dump_json(adapter.validate_python(result, from_attributes=True))
        return Response(content, status_code=self.status_code, media_type="application/json")


def unserved(route: APIRoute) -> tuple:
    """What FastAPI would resolve or apply for `route` and a direct route does not: each must be empty."""
    d = route.dependant
    return (
        d.query_params, d.path_params, d.header_params, d.cookie_params, d.dependencies,
        d.background_tasks_param_name, d.response_param_name, d.http_connection_param_name,
        d.websocket_param_name, d.security_scopes_param_name, route.response_model_include,
        route.response_model_exclude, route.response_model_exclude_unset,
        route.response_model_exclude_defaults, route.response_model_exclude_none,
        not isinstance(route.response_class, DefaultPlaceholder),
    )  # fmt: skip


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """JSON -> Python as FastAPI parses it: a decode error is a 422 at its position; any other failure
    (nesting too deep, bytes no Unicode encoding decodes) a 400."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {},
                 "ctx": {"error": exc.msg}}  # fmt: skip
        raise RequestValidationError([error], body=exc.doc) from exc
    except Exception as exc:  # noqa: BLE001 - whatever the parser raised, the body is at fault
        raise HTTPException(400, "There was an error parsing the body") from exc


ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


def handler_of(handlers: dict[Any, ExceptionHandler], exc: Exception) -> ExceptionHandler | None:
    """The app's handler for `exc`, by its class hierarchy, as FastAPI's exception middleware finds it.
    The one for Exception itself is the server-error handler's, which an unhandled error reaches anyway."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


class DirectRoutes(HttpMiddleware):
    """Serves a POST to the exact path of one of `routes` directly (DirectRoute); anything else goes on
    to the app. Installed innermost, so every middleware outside (metrics, request id, hardening, body
    limits, canonical paths, unexpected errors) applies to these requests as to all others."""

    def __init__(self, app: ASGIApp, routes: Iterable[APIRoute]):
        super().__init__(app)
        self.routes = {route.path: DirectRoute(route) for route in routes if "POST" in route.methods}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["method"] == "POST" else None
        if route is None or scope.get("root_path"):  # behind a path prefix the router knows the route path
            await self.app(scope, receive, send)
            return
        await route(scope, receive, send)
