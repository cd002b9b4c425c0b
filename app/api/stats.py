"""GET/DELETE /v1/stats/{namespace}: the running statistics of a namespace (RL run)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from app.api.deps import Service, require_admin
from app.api.error_handlers import error_docs
from app.errors import NotFound
from app.schemas import NAMESPACE_PATTERN, RunningStatsResponse

router = APIRouter(tags=["model"])
Namespace = Annotated[
    str, Path(pattern=NAMESPACE_PATTERN, description="The running-statistics namespace (RL run id).")
]


@router.get("/v1/stats/{namespace}", response_model=RunningStatsResponse, responses=error_docs(404, 422))
async def read_running_stats(namespace: Namespace, service: Service) -> RunningStatsResponse:
    """The namespace's running mean and variance of hybrid rewards (404 before its first running request)."""
    stats = service.running_stats.get(namespace)
    if stats is None:
        raise NotFound(f"namespace {namespace!r} has no running statistics")
    return RunningStatsResponse(
        namespace=namespace, count=stats.count, mean=stats.mean, variance=stats.variance,
        momentum=service.running_stats.momentum,
    )  # fmt: skip


@router.delete(
    "/v1/stats/{namespace}", dependencies=[Depends(require_admin)], responses=error_docs(401, 403, 404, 422)
)
async def reset_running_stats(namespace: Namespace, service: Service) -> dict:
    """Forget the namespace's statistics (admin bearer token required)."""
    if not service.running_stats.reset(namespace):
        raise NotFound(f"namespace {namespace!r} has no running statistics")
    return {"namespace": namespace, "reset": True}
