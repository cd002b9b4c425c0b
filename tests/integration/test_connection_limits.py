"""Connections a client opens cannot exhaust the server: headers are bounded in size, a connection must
send its request headers within header_timeout_s, and beyond max_connections new ones are refused at
once; with either HTTP protocol the service can run (httptools, its default, and h11). Plain sockets on
loopback, a few hundred at most, each with a timeout."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, start_server

MAX_CONNECTIONS = 40
HEADER_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 8192
WAIT_S = 15.0  # how long a socket waits for the server to act; generous on a loaded machine
PAIR = {"prompt": "How do I boil an egg?", "response": "Put it in boiling water for eight minutes."}


@pytest.fixture(scope="module", params=["httptools", "h11"])
def protocol(request: pytest.FixtureRequest) -> str:
    """The HTTP protocol of `bounded_server` (REWARD_HTTP_PROTOCOL)."""
    return request.param


@pytest.fixture(scope="module")
def bounded_server(
    protocol: str, tiny_model_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = {"REWARD_MAX_CONNECTIONS": str(MAX_CONNECTIONS), "REWARD_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
           "REWARD_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES), "REWARD_HTTP_PROTOCOL": protocol}  # fmt: skip
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


def read_responses(sock: socket.socket, count: int) -> list[bytes]:
    """`count` whole responses with a Content-Length, in order, leaving the connection open."""
    received, responses = b"", []

    def receive() -> bytes:
        if not (chunk := sock.recv(65536)):
            raise AssertionError(
                f"closed after {len(responses)} responses: {(responses or [received])[-1][:300]}"
            )
        return chunk

    while len(responses) < count:
        while b"\r\n\r\n" not in received:
            received += receive()
        head, _, rest = received.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        while len(rest) < length:
            rest += receive()
        responses.append(head + b"\r\n\r\n" + rest[:length])
        received = rest[length:]
    return responses


def read_response(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length, leaving the connection open."""
    return read_responses(sock, 1)[0]


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


def test_the_server_runs_the_configured_protocol(bounded_server: RunningServer, protocol: str) -> None:
    name = {"httptools": "BoundedHttpToolsProtocol", "h11": "BoundedH11Protocol"}[protocol]
    assert f"HTTP protocol: {name} (http_protocol={protocol})" in bounded_server.log()


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
        # a line that reached the socket after the server closed it makes the kernel reset the connection:
        # that is a cut too (a server that kept the socket open would raise TimeoutError here)
        with contextlib.suppress(ConnectionResetError):
            assert read_until_closed(slow) == b""


def test_a_keep_alive_connection_gets_the_same_deadline_after_a_response(
    bounded_server: RunningServer,
) -> None:
    with open_sockets(bounded_server.url, 1) as (sock,):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert read_until_closed(sock) == b""


def test_a_busy_keep_alive_connection_outlives_the_header_timeout(bounded_server: RunningServer) -> None:
    with open_sockets(bounded_server.url, 1) as (sock,):
        started = time.monotonic()
        while time.monotonic() - started < 3 * HEADER_TIMEOUT_S:  # each request within the deadline
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")
            time.sleep(HEADER_TIMEOUT_S / 4)
        assert read_until_closed(sock) == b""  # then idle: closed after the timeout


def test_oversized_headers_are_refused_and_the_server_stays_responsive(bounded_server: RunningServer) -> None:
    with open_sockets(bounded_server.url, 1) as (sock,):
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):
            answer = read_until_closed(sock)
            assert answer == b"" or answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431"))
    assert httpx.get(f"{bounded_server.url}/healthz", timeout=WAIT_S).status_code == 200


def test_headers_past_the_limit_in_many_small_sends_are_refused(bounded_server: RunningServer) -> None:
    with open_sockets(bounded_server.url, 1) as (sock,):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for _ in range(2 * MAX_HEADER_BYTES // 1000):  # 1 KB per 10 ms: well within the header timeout
            if select.select([sock], [], [], 0.01)[0]:  # the server answered: stop sending
                break
            sock.sendall(b"X-Part: " + b"a" * 990 + b"\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400")


def test_a_head_one_byte_over_the_limit_is_refused_and_one_at_the_limit_is_served(
    bounded_server: RunningServer, protocol: str
) -> None:
    """httptools counts the parsed request line and headers exactly; h11 refuses only a head still
    incomplete past the limit, so a whole one read at once may pass it by up to one read."""
    if protocol == "h11":
        pytest.skip("h11's limit applies to incomplete heads only")
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n"
    padding = MAX_HEADER_BYTES - len(head % b"")
    with open_sockets(bounded_server.url, 2) as (under, over):
        under.sendall(head % (b"a" * padding))  # exactly the limit
        assert read_response(under).startswith(b"HTTP/1.1 200")
        over.sendall(head % (b"a" * (padding + 1)))
        assert read_until_closed(over).startswith(b"HTTP/1.1 400")


def post(path: str, body: bytes) -> bytes:
    head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return head % (path.encode(), len(body)) + body


def test_a_large_body_sent_with_its_headers_is_not_taken_for_headers(bounded_server: RunningServer) -> None:
    items = [{"prompt": "p" * 100, "response": "r" * 9900} for _ in range(20)]
    body = json.dumps({"items": items}).encode()
    assert len(body) > 24 * MAX_HEADER_BYTES  # about 200 KB
    with open_sockets(bounded_server.url, 1) as (sock,):
        sock.sendall(post("/score_batch", body))  # one send: the server reads headers and body together
        answer = read_response(sock)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert len(json.loads(answer.partition(b"\r\n\r\n")[2])["rewards"]) == 20


def test_pipelined_requests_after_a_large_body_are_all_answered(bounded_server: RunningServer) -> None:
    big = json.dumps({"items": [{"prompt": "p", "response": "r" * 9990}] * 10}).encode()
    small = json.dumps(PAIR).encode()
    with open_sockets(bounded_server.url, 1) as (sock,):
        sock.sendall(
            post("/score_batch", big) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + post("/score", small)
        )
        answers = read_responses(sock, 3)
        assert [answer[:12] for answer in answers] == [b"HTTP/1.1 200"] * 3
        assert b'"rewards"' in answers[0] and b'"model_version"' in answers[2]


def chunked(path: str, chunks: list[bytes], trailer: bytes = b"") -> bytes:
    head = (
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return head % path.encode() + body + b"0\r\n" + trailer + b"\r\n"


def test_a_chunked_body_with_a_small_trailer_is_served(bounded_server: RunningServer) -> None:
    body = json.dumps(PAIR).encode()
    with open_sockets(bounded_server.url, 1) as (sock,):
        sock.sendall(chunked("/score", [body[:20], body[20:]], trailer=b"X-Checksum: 1234\r\n"))
        assert read_response(sock).startswith(b"HTTP/1.1 200")


def test_an_endless_trailer_is_cut_off_like_an_endless_header(
    bounded_server: RunningServer, protocol: str
) -> None:
    """Trailer lines after the last chunk are parsed like headers: bounded the same way."""
    if protocol == "h11":
        pytest.skip("h11 bounds trailers with its own incomplete-event limit")
    body = json.dumps(PAIR).encode()
    with open_sockets(bounded_server.url, 1) as (sock,):
        sock.sendall(chunked("/score", [body])[: -len(b"\r\n")] + b"X-Big: ")
        for _ in range(1000):  # up to 1 MB, 1 KB a send, while the server has not answered
            if select.select([sock], [], [], 0.002)[0]:
                break
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                sock.sendall(b"a" * 1000)
        with contextlib.suppress(ConnectionResetError):
            answer = read_until_closed(sock)
            assert answer.startswith(b"HTTP/1.1 400"), answer[:300]


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
