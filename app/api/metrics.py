"""GET /metrics (Prometheus text format) and the middleware that counts and times every HTTP request."""

from __future__ import annotations

import re
import time

from fastapi import APIRouter, Request, Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import ServiceMetrics

router = APIRouter(tags=["operations"])
UNMATCHED = "unmatched"  # the endpoint label of paths no route serves, so scanners cannot add series


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def read_metrics(request: Request) -> Response:
    """Every reward_* series and the process's CPU and memory, in the Prometheus text format."""
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)


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


class MetricsMiddleware:
    """Pure ASGI: requests by endpoint and status, latency by endpoint, requests in flight."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics
        self.templates = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            self.metrics.inflight.dec()
            self.metrics.observe_request(
                self.templates.endpoint_of(scope), status, time.perf_counter() - started
            )
