"""Operations routes: GET|HEAD /healthz (the process is alive), /readyz (a model is loaded and warmed up)
and GET /metrics (Prometheus text format).

HEAD answers the same status without a body, for probes and load balancers that send HEAD."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.deps import Service
from app.api.error_handlers import error_docs
from app.schemas import HealthResponse

router = APIRouter()
PROBE_METHODS = ["GET", "HEAD"]


@router.api_route(
    "/healthz", methods=PROBE_METHODS, response_model=HealthResponse, summary="Liveness", tags=["health"]
)
async def read_health() -> HealthResponse:
    """200 while the process serves HTTP."""
    return HealthResponse(status="ok")


@router.api_route(
    "/readyz",
    methods=PROBE_METHODS,
    response_model=HealthResponse,
    responses=error_docs(503),
    summary="Readiness",
    tags=["health"],
)
async def read_readiness(service: Service, request: Request) -> HealthResponse:
    """200 once a model is loaded and warmed up; 503 with Retry-After before, or while its batches fail.
    Also says how the running-statistics snapshot fares (a failing one does not make it unready)."""
    version = service.check_ready()
    snapshot = request.app.state.metrics.snapshot_state()
    return HealthResponse(status="ready", model_version=version.version, stats_snapshot=snapshot)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, tags=["operations"])
async def read_metrics(request: Request) -> Response:
    """Every reward_* series and the process's CPU and memory, in the Prometheus text format."""
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)
