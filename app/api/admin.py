"""POST /admin/reload and /admin/rollback: swap model versions without a restart (bearer token required)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from app.api.deps import require_admin
from app.api.error_handlers import error_docs
from app.schemas import ErrorResponse, ReloadRequest, ReloadResponse
from app.watcher import ModelWatcher, ReloadResult

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=error_docs(401, 403, 404),
)


async def get_watcher(request: Request) -> ModelWatcher:
    return request.app.state.watcher


Watcher = Annotated[ModelWatcher, Depends(get_watcher)]
REFUSED_DOCS = {
    409: {"model": ErrorResponse, "description": "The version failed a check; the live one serves on"}
}


def reload_response(result: ReloadResult) -> ReloadResponse:
    return ReloadResponse(
        outcome=result.outcome, model_version=result.version, previous_version=result.previous,
        load_seconds=result.load_seconds,
    )  # fmt: skip


@router.post("/reload", response_model=ReloadResponse, responses={**REFUSED_DOCS, **error_docs(422)})
async def reload_model(watcher: Watcher, body: ReloadRequest | None = None) -> ReloadResponse:
    """Load a version beside the live one, check it, and swap it in; 409 with the reason if refused."""
    return reload_response(await watcher.reload(body.version if body is not None else None))


@router.post("/rollback", response_model=ReloadResponse)
async def rollback_model(watcher: Watcher) -> ReloadResponse:
    """Serve the previous version again (404 when there is none)."""
    return reload_response(await watcher.rollback())
