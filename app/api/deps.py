"""Dependencies of the routers: the serving objects built by create_app, and the admin guard."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.errors import AdminDisabled, Unauthorized
from app.registry import ModelRegistry
from app.service import ScoringService


# Dependencies are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop
# per request that costs more than the lookup itself.
async def get_service(request: Request) -> ScoringService:
    return service_of(request)


def service_of(request: Request) -> ScoringService:  # called directly by the directly served routes
    return request.app.state.service


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def get_settings(request: Request) -> Settings:  # called directly, not a dependency
    return request.app.state.settings


async def require_admin(request: Request) -> None:
    """Bearer token compared in constant time; with no token configured, admin endpoints are off."""
    configured = get_settings(request).admin_token
    if configured is None:
        raise AdminDisabled("admin endpoints are disabled: set REWARD_ADMIN_TOKEN to enable them")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = configured.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise Unauthorized("missing or wrong bearer token for an admin endpoint")


Service = Annotated[ScoringService, Depends(get_service)]
Registry = Annotated[ModelRegistry, Depends(get_registry)]
