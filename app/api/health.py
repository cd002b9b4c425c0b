"""GET /healthz (the process is alive) and /readyz (a model is loaded and warmed up)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import Service
from app.api.errors import error_docs
from app.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def read_health() -> HealthResponse:
    """200 while the process serves HTTP."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=HealthResponse, responses=error_docs(503), summary="Readiness")
async def read_readiness(service: Service) -> HealthResponse:
    """200 once a model is loaded and warmed up; 503 with Retry-After before, or while its batches fail."""
    return HealthResponse(status="ready", model_version=service.check_ready().version)
