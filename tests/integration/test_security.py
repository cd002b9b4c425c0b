"""Security properties of the real server: admin bearer token, version names that cannot escape the model
store, loopback bind and no CORS by default, and logs without secrets or request texts but with ids."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, RunningServer, free_port, publish_tiny_version, start_server

ADMIN_TOKEN = "s3cret-admin-token-do-not-log-7f3a9c"
SECRET_TEXT = "my api key is sk-live-4242-TOPSECRET-4242 please keep it"
PAIR = {"prompt": "How do I boil an egg?", "response": "Put it in boiling water for eight minutes."}
ADMIN_CALLS = [("POST", "/admin/reload"), ("POST", "/admin/rollback"), ("DELETE", "/v1/stats/run-1")]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ \S+ \[(?P<request_id>[^\]]+)\] ")


@pytest.fixture(scope="module")
def two_version_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("security")
    store = root / "model_store"
    publish_tiny_version(store, "tiny-v1")
    publish_tiny_version(store, "tiny-v2", seed=1, make_current=False)
    publish_tiny_version(root, "outside", seed=2)  # a valid version beside the store, not in it
    return store


@pytest.fixture(scope="module")
def admin_server(
    two_version_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = {"REWARD_ADMIN_TOKEN": ADMIN_TOKEN, "REWARD_RELOAD_INTERVAL": "0"}
    with start_server(two_version_store, tmp_path_factory.mktemp("admin"), env=env) as server:
        yield server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(("method", "path"), ADMIN_CALLS)
@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong-token-wrong-token"), bearer(ADMIN_TOKEN[:-1]), {"Authorization": ADMIN_TOKEN},
     {"Authorization": f"Basic {ADMIN_TOKEN}"}, bearer(ADMIN_TOKEN + "x")],
    ids=["missing", "wrong", "prefix", "no-scheme", "basic", "longer"],
)  # fmt: skip
def test_admin_endpoints_refuse_missing_or_wrong_tokens(
    admin_server: RunningServer, method: str, path: str, headers: dict
) -> None:
    response = httpx.request(method, f"{admin_server.url}{path}", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_admin_endpoints_accept_the_right_token(admin_server: RunningServer) -> None:
    url = admin_server.url
    reload = httpx.post(f"{url}/admin/reload", json={"version": "tiny-v2"}, headers=bearer(ADMIN_TOKEN))
    assert reload.status_code == 200, reload.text
    assert httpx.get(f"{url}/v1/model").json()["version"] == "tiny-v2"
    rollback = httpx.post(f"{url}/admin/rollback", headers=bearer(ADMIN_TOKEN))
    assert rollback.status_code == 200, rollback.text
    assert httpx.get(f"{url}/v1/model").json()["version"] == "tiny-v1"
    httpx.post(f"{url}/score", json={**PAIR, "normalize": "running", "namespace": "run-1"})
    reset = httpx.delete(f"{url}/v1/stats/run-1", headers=bearer(ADMIN_TOKEN))
    assert reset.status_code == 200 and reset.json() == {"namespace": "run-1", "reset": True}
    assert httpx.get(f"{url}/v1/stats/run-1").status_code == 404


@pytest.mark.parametrize(
    "version", ["../outside", "..", "../../etc", "/etc/passwd", "a/../../outside", ".tmp-x", "tiny-v1/..",
                "..\\outside", "%2e%2e/outside", "tiny-v1\x00", " tiny-v1", "x" * 200, ""],
)  # fmt: skip
def test_reload_refuses_names_that_escape_the_store(admin_server: RunningServer, version: str) -> None:
    url = admin_server.url
    before = httpx.get(f"{url}/v1/model").json()["version"]
    response = httpx.post(f"{url}/admin/reload", json={"version": version}, headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["type"] == "validation_error"
    assert httpx.get(f"{url}/v1/model").json()["version"] == before


def test_reload_of_a_missing_version_is_refused_and_the_live_one_serves(admin_server: RunningServer) -> None:
    url = admin_server.url
    response = httpx.post(f"{url}/admin/reload", json={"version": "v9"}, headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found", response.text
    assert httpx.post(f"{url}/score", json=PAIR).status_code == 200


def test_admin_endpoints_are_off_without_a_configured_token(tiny_server: RunningServer) -> None:
    for method, path in ADMIN_CALLS:
        response = httpx.request(method, f"{tiny_server.url}{path}", headers=bearer(ADMIN_TOKEN))
        assert response.status_code == 403, (path, response.text)
        assert response.json()["error"]["type"] == "admin_disabled"


def test_cors_is_off_by_default(tiny_server: RunningServer) -> None:
    origin = {"Origin": "https://evil.example"}
    preflight = httpx.options(
        f"{tiny_server.url}/score", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    simple = httpx.post(f"{tiny_server.url}/score", json=PAIR, headers=origin)
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers


def test_responses_carry_security_headers_and_a_request_id(tiny_server: RunningServer) -> None:
    response = httpx.post(f"{tiny_server.url}/score", json=PAIR, headers={"X-Request-ID": "trace-123.abc"})
    assert response.headers["x-request-id"] == "trace-123.abc"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    forged = httpx.get(f"{tiny_server.url}/healthz", headers={"X-Request-ID": "bad id] INFO forged line"})
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["x-request-id"])


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on `port`, read from the kernel's tables (IPv4 and
    IPv6), whatever interfaces this machine has."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)
                    # the kernel prints each 32-bit word in host (little-endian) order
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    found.add(socket.inet_ntop(family, words))
    return found


def test_binds_loopback_only_by_default(tiny_model_store: Path, tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "app", "--port", str(port), "--model-store", str(tiny_model_store)]
    # float32 as every test server (conftest): with `auto` the first load exports and times ONNX paths,
    # and a server stopped during its first load waits for it
    env = {"REWARD_STATS_PATH": str(tmp_path / "stats.json"), "PATH": "/usr/bin:/bin"}
    env["REWARD_DTYPE"] = "float32"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        server = RunningServer(f"http://127.0.0.1:{port}", process, tmp_path / "server.log")
        deadline = time.monotonic() + 60
        while not _answers(server.url) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _answers(server.url), server.log()
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_logs_hold_no_secrets_or_texts_and_every_line_a_request_id(
    two_version_store: Path, tmp_path: Path
) -> None:
    env = {"REWARD_ADMIN_TOKEN": ADMIN_TOKEN, "REWARD_RELOAD_INTERVAL": "0"}
    with start_server(two_version_store, tmp_path, env=env) as server:
        url = server.url
        secret_pair = {"prompt": SECRET_TEXT, "response": SECRET_TEXT}
        assert httpx.post(f"{url}/score", json=secret_pair).status_code == 200
        httpx.post(f"{url}/score", json={"prompt": SECRET_TEXT, "response": "x", "alpha": 7})  # 422
        httpx.post(f"{url}/score_batch", json={"items": [{"prompt": SECRET_TEXT}]})  # 422
        httpx.post(f"{url}/admin/reload", headers=bearer(ADMIN_TOKEN + "-wrong"))  # 401
        reload = httpx.post(
            f"{url}/admin/reload", json={"version": "tiny-v2"},
            headers={**bearer(ADMIN_TOKEN), "X-Request-ID": "reload-req-1"},
        )  # fmt: skip
        assert reload.status_code == 200, reload.text
        httpx.post(f"{url}/admin/reload", json={"version": "../outside"}, headers=bearer(ADMIN_TOKEN))
    log = server.log()
    for secret in (ADMIN_TOKEN, "TOPSECRET", "sk-live"):
        assert secret not in log
    lines = [line for line in log.splitlines() if LOG_LINE.match(line)]
    assert any(LOG_LINE.match(line)["request_id"] == "reload-req-1" for line in lines), log
    # every line has the format with a request id; indented lines continue a multi-line message
    stray = [line for line in log.splitlines() if line and not line[0].isspace() and not LOG_LINE.match(line)]
    assert not stray, stray
