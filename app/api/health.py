"""GET|HEAD /healthz (the process is alive) and /readyz (a model is loaded and warmed up).

HEAD answers the same status without a body, for probes and load balancers that send HEAD."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import Service
from app.api.errors import error_docs
from app.schemas import HealthResponse

router = APIRouter(tags=["health"])
PROBE_METHODS = ["GET", "HEAD"]


@router.api_route("/healthz", methods=PROBE_METHODS, response_model=HealthResponse, summary="Liveness")
async def read_health() -> HealthResponse:
    """200 while the process serves HTTP."""
    return HealthResponse(status="ok")


@router.api_route(
    "/readyz",
    methods=PROBE_METHODS,
    response_model=HealthResponse,
    responses=error_docs(503),
    summary="Readiness",
)
async def read_readiness(service: Service, request: Request) -> HealthResponse:
    """200 once a model is loaded and warmed up; 503 with Retry-After before, or while its batches fail.
    Also says how the running-statistics snapshot fares (a failing one does not make it unready)."""
    version = service.check_ready()
    snapshot = request.app.state.metrics.snapshot_state()
    return HealthResponse(status="ready", model_version=version.version, stats_snapshot=snapshot)
