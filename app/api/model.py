"""GET /v1/model: what is serving; GET/DELETE /v1/stats/{namespace}: running statistics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from app.api.deps import Registry, Service, require_admin
from app.api.errors import error_docs
from app.errors import NotFound
from app.schemas import NAMESPACE_PATTERN, ModelInfo, RunningStatsResponse

router = APIRouter(tags=["model"])
PUBLIC_MANIFEST_SECTIONS = ("training_args",)  # sections whose path-like values stay on the server
PATH_ARGUMENTS = {"data", "model_store", "feature_cache"}  # training arguments that name local paths
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
        **version.backend.describe(),
        device=str(registry.device),
        dtype=registry.execution_report(version)["dtype"],
        execution=registry.execution_report(version),
        calibration={"reward_mean": mean, "reward_std": std},
        metrics=version.metrics,
        refusal_check=version.metrics.get("refusal_check"),
        manifest=public_manifest(version.manifest),
    )


def looks_like_path(value: object) -> bool:
    """A filesystem path (or a list holding one): it tells a client how the training host is laid out."""
    if isinstance(value, str):
        return "/" in value or "\\" in value or value.startswith("~")
    if isinstance(value, (list, tuple)):
        return any(looks_like_path(item) for item in value)
    return False


def public_manifest(manifest: dict) -> dict:
    """The manifest less the path-like training arguments (data files, caches, output directories);
    hyperparameters, checksums and data counts stay."""
    public = dict(manifest)
    for section in PUBLIC_MANIFEST_SECTIONS:
        if isinstance(public.get(section), dict):
            public[section] = {
                k: v for k, v in public[section].items() if k not in PATH_ARGUMENTS and not looks_like_path(v)
            }
    return public


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
