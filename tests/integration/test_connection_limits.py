"""Connections a client opens cannot exhaust the server: headers are bounded in size, a connection must
send its request headers within header_timeout_s, and beyond max_connections new ones are refused at
once. Plain sockets on loopback, a few hundred at most, each with a timeout."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, start_server

MAX_CONNECTIONS = 40
HEADER_TIMEOUT_S = 1.0
WAIT_S = 15.0  # how long a socket waits for the server to act; generous on a loaded machine


@pytest.fixture(scope="module")
def bounded_server(
    tiny_model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = {"REWARD_MAX_CONNECTIONS": str(MAX_CONNECTIONS), "REWARD_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
           "REWARD_MAX_HEADER_BYTES": "8192"}  # fmt: skip
    with start_server(tiny_model_store, tmp_path_factory.mktemp("bounded"), env=env) as server:
        yield server


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; raises TimeoutError if it keeps the socket open."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, leaving the connection open."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@contextlib.contextmanager
def open_sockets(url: str, count: int) -> Iterator[list[socket.socket]]:
    sockets = []
    try:
        for _ in range(count):
            sockets.append(connect(url))
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_an_idle_connection_is_closed_after_the_header_timeout(bounded_server: RunningServer) -> None:
    with open_sockets(bounded_server.url, 1) as (idle,):
        assert read_until_closed(idle) == b""


def test_headers_trickled_slowly_are_cut_off(bounded_server: RunningServer) -> None:
    with open_sockets(bounded_server.url, 1) as (slow,):
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for _ in range(int(4 * HEADER_TIMEOUT_S / 0.2)):
                slow.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.2)
        assert read_until_closed(slow) == b""


def test_a_keep_alive_connection_gets_the_same_deadline_after_a_response(
    bounded_server: RunningServer,
) -> None:
    with open_sockets(bounded_server.url, 1) as (sock,):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert read_until_closed(sock) == b""


def test_oversized_headers_are_refused_and_the_server_stays_responsive(bounded_server: RunningServer) -> None:
    with open_sockets(bounded_server.url, 1) as (sock,):
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            answer = read_until_closed(sock)
            assert answer == b"" or answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431"))
    assert httpx.get(f"{bounded_server.url}/healthz", timeout=WAIT_S).status_code == 200


def test_connections_beyond_the_limit_are_refused_and_freed_sockets_serve_again(
    bounded_server: RunningServer,
) -> None:
    with open_sockets(bounded_server.url, 5 * MAX_CONNECTIONS) as sockets:
        refused = 0
        for sock in sockets[MAX_CONNECTIONS:]:
            with contextlib.suppress(ConnectionResetError):
                answer = read_until_closed(sock)  # closed at once, not after the header timeout
                assert answer == b"" or answer.startswith(b"HTTP/1.1 503")
            refused += 1
        assert refused == 4 * MAX_CONNECTIONS
        for sock in sockets[:MAX_CONNECTIONS]:  # the idle ones within the limit go after the timeout
            with contextlib.suppress(ConnectionResetError):
                assert read_until_closed(sock) == b""
    assert httpx.get(f"{bounded_server.url}/healthz", timeout=WAIT_S).status_code == 200
