"""reward-serve's start: the open-file limit is raised to what max_connections needs."""

from __future__ import annotations

import resource

import pytest

from app.__main__ import raise_file_limit, settings_from_args


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
