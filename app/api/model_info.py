"""GET /v1/model: what is serving (architecture, execution, calibration, public manifest)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import Registry, Service
from app.api.error_handlers import error_docs
from app.schemas import ModelInfo

router = APIRouter(tags=["model"])
PUBLIC_MANIFEST_SECTIONS = ("training_args",)  # sections whose path-like values stay on the server
PATH_ARGUMENTS = {"data", "model_store", "feature_cache"}  # training arguments that name local paths


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
