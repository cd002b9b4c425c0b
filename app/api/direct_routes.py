"""Scoring and trainer POSTs served directly, past FastAPI's routing, dependency and response layers.

A trainer calls /score (or /get_reward, /classify...) thousands of times a minute, and each call's HTTP
work runs on the event loop, on the same cores as the forward passes. FastAPI's per-request machinery
(its exception, body-limit and telemetry middleware, the router, dependency solving, response
validation) costs about 200 µs of CPU per request there, more than the route's own work. `DirectRoutes`
serves the POSTs of the routes given to it with only what they need:

- read the body (through the middleware outside, which bounds its size and time);
- parse it as FastAPI does: JSON only for a JSON content type, the same errors, with the same locations,
  for invalid JSON;
- resolve the route's dependencies that read only query parameters (the trainer routes' scoring
  options), with FastAPI's own parameter parsing, then validate the body; errors of both are reported
  together, dependencies' first, as FastAPI reports them;
- call the route's own endpoint function with the validated body, the dependencies' values and the
  request;
- answer with the response model's JSON (validated and dumped as FastAPI does), or the Response the
  endpoint returned;
- turn an exception into the response of the app's handler for it, as FastAPI's exception middleware
  does; an exception without one goes on to the unexpected-error middleware outside.

One answer differs, on purpose: a client that disconnects while sending its body is counted as 499,
like one that disconnects while its rewards are computed (FastAPI answers it 400, which nobody reads).

The routes stay declared on their FastAPI routers: the OpenAPI document, other methods (405), trailing-slash
redirects and anything else not a POST to the exact path are FastAPI's as before. A route served here may
take only a JSON body, the request and dependencies on query parameters alone, and its router must be
included without a prefix, dependencies or a default response class: anything else is FastAPI's to
apply, so a route with it is refused when the app is built, and a request while the app overrides a
dependency goes to FastAPI.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.cancellation import CLIENT_CLOSED
from app.api.middleware import HttpMiddleware, is_json

MISSING = object()  # an empty body: FastAPI reports the body as missing


class ClientDisconnected(Exception):
    """The client went away while sending its body."""


class DirectRoute:
    """One POST route of a FastAPI router, served without FastAPI's per-request layers."""

    def __init__(self, route: APIRoute):
        dependant = route.dependant
        if len(dependant.body_params) != 1 or route.response_model is None or any(unserved(route)):
            raise ValueError(
                f"route {route.path} cannot be served directly: it must take one JSON body, the request "
                "and dependencies on query parameters only, and declare its response model with no "
                "response options"
            )
        body = dependant.body_params[0]
        self.route = route
        self.body_name = body.name
        self.request_name = dependant.request_param_name
        self.dependencies = dependant.dependencies
        self.body_adapter: TypeAdapter = TypeAdapter(body.field_info.annotation)
        self.response_adapter: TypeAdapter = TypeAdapter(route.response_model)
        self.status_code = route.status_code or 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # as the router sets it: the metrics label the route by its template
        request = Request(scope, receive, send)
        try:
            raw = await read_body(receive)
            value = parse_json(raw) if raw and is_json(request.headers.get("content-type", "")) else raw
            arguments = await self.arguments(request, value if raw else MISSING)
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

    async def arguments(self, request: Request, body: Any) -> dict[str, Any]:
        """The endpoint's arguments as FastAPI solves them: each dependency from the query string (one
        whose parameters are invalid is not called), then the body; all their errors in one 422."""
        arguments: dict[str, Any] = {}
        errors: list[Any] = []
        for dependency in self.dependencies:
            values, invalid = request_params_to_args(dependency.query_params, request.query_params)
            errors += invalid
            if not invalid:
                arguments[dependency.name] = await dependency.call(**values)
        if body is MISSING:
            errors.append({"type": "missing", "loc": ("body",), "msg": "Field required", "input": None})
        else:
            try:
                arguments[self.body_name] = self.body_adapter.validate_python(body, from_attributes=True)
            except ValidationError as exc:
                errors += [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        if errors:
            raise RequestValidationError(errors, body=None if body is MISSING else body)
        if self.request_name:
            arguments[self.request_name] = request
        return arguments

    def json_response(self, result: Any) -> Response:
        adapter = self.response_adapter
        content = adapter.dump_json(adapter.validate_python(result, from_attributes=True), by_alias=True)
        return Response(content, status_code=self.status_code, media_type="application/json")


def unserved(route: APIRoute) -> tuple:
    """What FastAPI would resolve or apply for `route` and a direct route does not: each must be empty."""
    d = route.dependant
    return (
        d.query_params, d.path_params, d.header_params, d.cookie_params, d.background_tasks_param_name,
        d.response_param_name, d.http_connection_param_name, d.websocket_param_name,
        d.security_scopes_param_name, route.response_model_include, route.response_model_exclude,
        route.response_model_exclude_unset, route.response_model_exclude_defaults,
        route.response_model_exclude_none, not route.response_model_by_alias,
        not isinstance(route.response_class, DefaultPlaceholder),
        not isinstance(route.strict_content_type, DefaultPlaceholder), route.max_body_size is not None,
        *(not reads_only_query(dependency) for dependency in d.dependencies),
    )  # fmt: skip


def reads_only_query(dependency: Dependant) -> bool:
    """A coroutine dependency whose parameters are all query parameters, with none of its own."""
    return (
        dependency.name is not None
        and inspect.iscoroutinefunction(dependency.call)
        and not (dependency.dependencies or dependency.body_params or dependency.path_params
                 or dependency.header_params or dependency.cookie_params or dependency.request_param_name
                 or dependency.background_tasks_param_name or dependency.response_param_name
                 or dependency.security_scopes_param_name or dependency.http_connection_param_name)
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
        # behind a path prefix only the router knows the route's path; overridden dependencies (tests of
        # an embedding app) are FastAPI's to resolve
        if route is None or scope.get("root_path") or scope["app"].dependency_overrides:
            await self.app(scope, receive, send)
            return
        await route(scope, receive, send)
