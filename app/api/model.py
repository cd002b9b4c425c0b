"""GET /v1/model: what is serving; GET/DELETE /v1/stats/{namespace}: running statistics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from app.api.deps import Registry, Service, require_admin
from app.api.errors import error_docs
from app.errors import NotFound
from app.schemas import NAMESPACE_PATTERN, ModelInfo, RunningStatsResponse

router = APIRouter(tags=["model"])
Namespace = Annotated[
    str, Path(pattern=NAMESPACE_PATTERN, description="The running-statistics namespace (RL run id).")
]


@router.get("/v1/model", response_model=ModelInfo, responses=error_docs(503))
async def read_model(service: Service, registry: Registry) -> ModelInfo:
    """The live version: architecture, encoding, calibration, training metrics and manifest."""
    version = service.live_version()
    mean, std = version.calibration
    return ModelInfo(
        version=version.version,
        architecture=version.model.cfg.to_dict(),
        encoding=version.tokenizer.spec.to_dict(),
        parameters=version.model.num_parameters(),
        device=str(registry.device),
        dtype=registry.execution_report(version)["dtype"],
        execution=registry.execution_report(version),
        calibration={"reward_mean": mean, "reward_std": std},
        metrics=version.metrics,
        manifest=version.manifest,
    )


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
