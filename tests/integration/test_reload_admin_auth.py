"""The admin endpoints answer only to the configured bearer token, and are off when none is configured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_VERSION, RunningServer, start_server

ADMIN_TOKEN = "admin-auth-test-token"
ADMIN_CALLS = [("/admin/reload", {"version": TINY_VERSION}), ("/admin/rollback", None)]


@pytest.fixture(scope="module")
def guarded_server(
    tiny_model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = {"REWARD_ADMIN_TOKEN": ADMIN_TOKEN}
    with start_server(tiny_model_store, tmp_path_factory.mktemp("server"), env=env) as server:
        yield server


@pytest.mark.parametrize("path,body", ADMIN_CALLS)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-of-some-length", f"Basic {ADMIN_TOKEN}", f"Bearer {ADMIN_TOKEN}x", "Bearer"],
    ids=["missing", "wrong", "not-bearer", "longer", "empty"],
)
def test_a_missing_or_wrong_token_gets_401_and_changes_nothing(
    guarded_server: RunningServer, path: str, body: dict | None, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(f"{guarded_server.url}{path}", json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "unauthorized"
    assert httpx.get(f"{guarded_server.url}/readyz").json()["model_version"] == TINY_VERSION


def test_the_right_token_is_let_in(guarded_server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    reload = httpx.post(f"{guarded_server.url}/admin/reload", headers=headers)
    assert reload.status_code == 200
    assert reload.json()["outcome"] == "unchanged" and reload.json()["model_version"] == TINY_VERSION
    rollback = httpx.post(f"{guarded_server.url}/admin/rollback", headers=headers)
    assert rollback.status_code == 404  # let in; nothing to roll back to yet
    assert "no previous version" in rollback.json()["error"]["message"]


def test_a_version_name_that_could_escape_the_store_is_a_validation_error(
    guarded_server: RunningServer,
) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = httpx.post(f"{guarded_server.url}/admin/reload", json={"version": "../x"}, headers=headers)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["loc"] == ["body", "version"]


@pytest.mark.parametrize("path,body", ADMIN_CALLS)
def test_without_a_configured_token_the_admin_endpoints_are_off(
    tiny_server: RunningServer, path: str, body: dict | None
) -> None:
    response = httpx.post(f"{tiny_server.url}{path}", json=body, headers={"Authorization": "Bearer anything"})
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "admin_disabled"
