"""Load generation for the benchmark and soak scripts: start `python -m app` on loopback, wait for it,
stop it, read its memory, and drive it over light keep-alive HTTP/1.1 connections.

It talks HTTP and starts processes only: no server module is imported, so what it measures is the
server as clients see it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

# the directory holding the `app` package: `python -m app` started there finds it, installed or not
PACKAGE_PARENT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
IDLE_REUSE_S = 3.0  # reuse a keep-alive connection idle for less than this


def run_clients(clients: Coroutine[Any, Any, T]) -> T:
    """Run the load generator's coroutine on uvloop when it is installed (uvicorn's standard extra brings
    it): about a fifth less CPU per request than asyncio's own loop, CPU the measured server shares when
    both run on one machine."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(clients)
    return uvloop.run(clients)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_command(store: Path, *args: str) -> list[str]:
    """`python -m app` serving `store` on loopback (`serving` adds the port); `args`: more options."""
    return [sys.executable, "-m", "app", "--host", "127.0.0.1", "--model-store", str(store), *args]


def start_process(command: list[str], env: dict[str, str], log_path: Path | None = None) -> subprocess.Popen:
    """Start `command` with `env` over this environment; its output goes to `log_path` (or nowhere)."""
    with open(log_path or os.devnull, "wb") as output:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, cwd=PACKAGE_PARENT, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT
        )


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 300, poll_s: float = 0.2) -> None:
    """Poll `url`/readyz until 200: RuntimeError if the process exits first, TimeoutError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(poll_s)
    raise TimeoutError(f"{url} not ready within {timeout_s} s")


def stop_process(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)


@contextlib.contextmanager
def serving(
    command: list[str], env: dict[str, str], log_path: Path | None = None, ready_timeout_s: float = 300
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `command` (a server taking `--port`) on a free loopback port; yield its URL and process once
    it is ready; stop it on exit."""
    port = free_port()
    process = start_process([*command, "--port", str(port)], env, log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, ready_timeout_s)
        yield url, process
    finally:
        stop_process(process)


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` in MiB, from /proc; NaN when it cannot be read (e.g. exited)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float | None:
    """The `q` quantile (0..1, nearest rank below) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def encode_request(host: str, path: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    """Read one HTTP/1.1 response with a Content-Length body; -> (status code, lower-cased headers)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.rstrip(b"\r\n").split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"transfer-encoding" in headers:
        raise ValueError("chunked responses are not supported by this client")
    length = int(headers.get(b"content-length", 0))
    if length:
        await reader.readexactly(length)
    return status, headers


class Connections:
    """Keep-alive HTTP/1.1 connections to one server, opened on demand and reused. Much lighter than
    httpx (~5 ms of CPU per request), which at a few hundred requests/s would take the cores from the
    server under test."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []  # + last use

    def post(self, path: str, body: dict) -> bytes:
        return encode_request(f"{self.host}:{self.port}", path, body)

    async def connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer, last_use = self.idle.pop()
            if time.monotonic() - last_use < IDLE_REUSE_S:
                return reader, writer
            writer.close()  # the server may have closed it (uvicorn's keep-alive timeout is 5 s)
        return await asyncio.open_connection(self.host, self.port)

    async def send(self, request: bytes, timeout_s: float = 300) -> tuple[int, dict[bytes, bytes]]:
        reader, writer = await self.connection()
        try:
            writer.write(request)
            status, headers = await asyncio.wait_for(read_response(reader), timeout=timeout_s)
        except BaseException:
            writer.close()
            raise
        if headers.get(b"connection", b"").lower() == b"close":
            writer.close()
        else:
            self.idle.append((reader, writer, time.monotonic()))
        return status, headers

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()
