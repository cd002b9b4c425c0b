"""reward-serve's start: the open-file limit is raised to what max_connections needs, and the HTTP protocol
uvicorn runs carries the connection bounds."""

from __future__ import annotations

import resource

import pytest

from app.__main__ import raise_file_limit, settings_from_args
from app.api import connections
from app.api.connections import (
    BoundedH11Protocol,
    BoundedHttpToolsProtocol,
    ProtocolUnavailable,
    bounded_protocol,
    resolve_protocol,
)


@pytest.fixture
def low_file_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"hard open-file limit {hard} leaves no room to test raising the soft one")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_low_soft_file_limit_is_raised_to_what_connections_need(low_file_limit) -> None:
    raise_file_limit(2000)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 2000
    raise_file_limit(600)  # never lowered
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 2000


def test_connection_bounds_have_flags() -> None:
    settings = settings_from_args(
        ["--max-connections", "50", "--header-timeout-s", "2", "--max-header-bytes", "4096"]
    )
    assert (settings.max_connections, settings.header_timeout_s, settings.max_header_bytes) == (50, 2.0, 4096)


def test_the_http_protocol_is_httptools_when_installed_else_h11_and_carries_the_bounds() -> None:
    protocol = bounded_protocol(settings_from_args(["--max-connections", "50", "--max-header-bytes", "4096"]))
    assert issubclass(protocol, BoundedHttpToolsProtocol)
    assert (protocol.max_connections, protocol.max_header_bytes) == (50, 4096)
    protocol = bounded_protocol(settings_from_args(["--http-protocol", "h11", "--header-timeout-s", "2"]))
    assert issubclass(protocol, BoundedH11Protocol) and protocol.header_timeout_s == 2.0
    protocol = bounded_protocol(settings_from_args(["--retry-after-s", "5"]))
    assert b"\r\nretry-after: 5\r\n" in protocol.too_many_connections  # the configured Retry-After


def test_without_httptools_auto_falls_back_to_h11_and_httptools_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connections, "BoundedHttpToolsProtocol", None)  # as when the import failed
    assert resolve_protocol("auto") == "h11"
    with pytest.raises(ProtocolUnavailable, match="httptools is not installed"):
        resolve_protocol("httptools")
