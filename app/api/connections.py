"""Bounded connections: the HTTP protocol uvicorn runs.

`bounded_protocol(...)` is the protocol class uvicorn instantiates per connection: uvicorn's httptools
protocol (its fast C parser) when httptools is installed, else its pure-Python h11 one; both with the
same bounds on what a client can hold before its request even starts:
- request line and headers larger than `max_header_bytes` get a plain 400 and the connection is closed
  (with httptools, counted here as headers arrive; with h11, h11's incomplete event size limit);
- a connection whose request headers are not complete `header_timeout_s` after it opened (or after its
  previous response) is closed: idle and slowly trickled connections cannot pile up;
- beyond `max_connections` open connections, a new one gets 503 with `Connection: close` at once, so
  file descriptors stay bounded whatever the number of sockets a client opens.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from uvicorn.protocols.http.h11_impl import H11Protocol

from app.config import HttpProtocolName, Settings

try:  # httptools is optional (uvicorn[standard] installs it); uvicorn's protocol imports it at once
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - exercised only where httptools is missing
    HttpToolsProtocol = None

TOO_MANY_CONNECTIONS_BODY = (
    b'{"error": {"type": "overloaded", "message": "too many open connections; retry later", "details": []}}'
)


def too_many_connections(retry_after_s: int) -> bytes:
    """The whole 503 answer to a connection beyond `max_connections`."""
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: %d\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
        % (retry_after_s, len(TOO_MANY_CONNECTIONS_BODY), TOO_MANY_CONNECTIONS_BODY)
    )


INVALID_REQUEST = "Invalid HTTP request received."  # uvicorn's 400 text (and log line) for a bad request
# `METHOD ` + ` HTTP/1.1\r\n` of the request line and the blank line that ends the headers
REQUEST_LINE_FRAMING = len(b"  HTTP/1.1\r\n\r\n")
HEADER_FRAMING = len(b": \r\n")  # around each header's name and value


class ConnectionBounds:
    """The header deadline and the connection bound, mixed into a uvicorn HTTP protocol (h11 or
    httptools): both keep the request in progress as `self.cycle` (set when its headers are complete)
    and call `on_response_complete` when its response is sent."""

    # set by bounded_protocol from the settings
    header_timeout_s: float
    max_connections: int
    too_many_connections: bytes

    def __init__(self, *args: object, **kwargs: object):
        self._header_timer: asyncio.TimerHandle | None = None
        self._headers_due = 0.0  # loop time by which the next request's headers must be complete
        super().__init__(*args, **kwargs)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(self.too_many_connections)
            transport.close()
            return
        self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._waiting_for_headers() and not self.transport.is_closing():
            self._expect_headers()  # the next request's headers get the same time

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _expect_headers(self) -> None:
        """The next request's headers are due `header_timeout_s` from now. One timer per connection
        checks; it is moved when it fires, not per request (a timer armed and cancelled per request
        would cost more than everything else the bounds do)."""
        self._headers_due = self.loop.time() + self.header_timeout_s
        if self._header_timer is None:
            self._header_timer = self.loop.call_at(self._headers_due, self._check_headers_due)

    def _check_headers_due(self) -> None:
        self._header_timer = None
        if not self._waiting_for_headers() or self.transport.is_closing():
            return  # a request is in progress: its response sets the next deadline
        if self.loop.time() < self._headers_due:  # a response since the timer was set moved it
            self._header_timer = self.loop.call_at(self._headers_due, self._check_headers_due)
        else:
            self.transport.close()


class BoundedH11Protocol(ConnectionBounds, H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers and a bound on open connections; the
    header size is h11's own limit (`h11_max_incomplete_event_size`)."""


class ProtocolUnavailable(Exception):
    """The configured HTTP protocol's library is not installed."""


class HeadersTooLarge(Exception):
    """Raised from the parser's headers-complete callback: httptools stops parsing and uvicorn answers
    its plain 400 for an invalid request."""


if HttpToolsProtocol is not None:

    class BoundedHttpToolsProtocol(ConnectionBounds, HttpToolsProtocol):
        """uvicorn's httptools protocol with the same bounds, and a header size limit httptools lacks.

        A request's head (request line and headers) is measured as it arrives, never its body. A read
        holding only bytes of the head (the headers were incomplete before and after it) adds its length;
        the request line and headers the parser has reported count as `METHOD url HTTP/1.1` and
        `name: value` lines. While the headers are incomplete after a read, a head past the limit gets
        the 400 at once, so a 1 MB or trickled header costs about one read beyond the limit; when they
        complete, the parsed size decides (computed only when the reads that hold the head could exceed
        the limit), so a body arriving in the same read as its headers is never taken for headers.

        After the headers, chunked framing and trailers are the parser's too (a trailer is a header
        line after the last chunk): the bytes of a message that are not body may exceed the body
        received by at most the same limit, so an endless trailer is cut off like an endless header.
        """

        max_header_bytes = 16 * 1024

        def __init__(self, *args: object, **kwargs: object):
            super().__init__(*args, **kwargs)
            self._in_head = True  # the headers of the current (or next) request are incomplete
            self._heads_completed = 0  # requests whose headers completed on this connection
            self._read_bytes = 0  # length of the read being parsed
            self._head_read_bytes = 0  # bytes of reads that held only the current request's head
            self._head_began_bytes = 0  # length of the read that ended a request and began this head
            self._last_head: list | None = None  # the headers of the last request whose head completed
            self._body_bytes = 0  # body of the current message received so far
            self._framing_bytes = 0  # bytes of the current message after its head that are not body

        def data_received(self, data: bytes) -> None:
            self._read_bytes = len(data)
            was_in_head, heads_completed = self._in_head, self._heads_completed
            body_before = self._body_bytes
            super().data_received(data)
            if not self._in_head:  # headers complete (and checked then): a body, or a response pending
                if not was_in_head and self._heads_completed == heads_completed:  # a read after the head
                    self._framing_bytes += len(data) - (self._body_bytes - body_before)
                    self._check_framing()
                return
            if was_in_head and self._heads_completed == heads_completed:  # the read was head bytes only
                self._head_read_bytes += len(data)
            elif self.headers is self._last_head:  # the read ended a request and began no other
                return
            else:  # the read ended a request and began the next (pipelined) one
                self._head_began_bytes = len(data)
            self._check_incomplete_head()

        def on_headers_complete(self) -> None:
            # the head lies within the reads of head bytes only, the read it began in and this one
            most = self._head_read_bytes + self._head_began_bytes + self._read_bytes
            too_large = most > self.max_header_bytes and self._head_bytes() > self.max_header_bytes
            self._in_head = False
            self._heads_completed += 1
            self._head_read_bytes = self._head_began_bytes = 0
            self._body_bytes = self._framing_bytes = 0
            self._last_head = self.headers
            if too_large:
                raise HeadersTooLarge  # httptools raises a parser error: uvicorn answers 400 and closes
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            self._body_bytes += len(body)
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._in_head = True
            super().on_message_complete()

        def _head_bytes(self) -> int:
            """The current request's head so far: the reads of head bytes only, or the request line and
            headers the parser has reported, whichever is more."""
            headers = self.headers or ()
            named = sum(len(name) + len(value) for name, value in headers) + HEADER_FRAMING * len(headers)
            method = self.parser.get_method() if headers else b""
            parsed = len(getattr(self, "url", b"")) + len(method) + REQUEST_LINE_FRAMING + named
            return max(self._head_read_bytes, parsed)

        def _check_framing(self) -> None:
            if (
                not self.transport.is_closing()
                and self._framing_bytes > self.max_header_bytes + self._body_bytes
            ):
                self.logger.warning(INVALID_REQUEST)
                self.send_400_response(INVALID_REQUEST)

        def _check_incomplete_head(self) -> None:
            if not self.transport.is_closing() and self._head_bytes() > self.max_header_bytes:
                self.logger.warning(INVALID_REQUEST)
                self.send_400_response(INVALID_REQUEST)

else:  # pragma: no cover
    BoundedHttpToolsProtocol = None


def resolve_protocol(name: HttpProtocolName) -> Literal["httptools", "h11"]:
    """auto = httptools when it is installed, else h11; httptools when it is not installed is an error."""
    if name == "auto":
        return "httptools" if BoundedHttpToolsProtocol is not None else "h11"
    if name == "httptools" and BoundedHttpToolsProtocol is None:
        raise ProtocolUnavailable("http_protocol=httptools, but httptools is not installed")
    return name


def bounded_protocol(settings: Settings) -> type[asyncio.Protocol]:
    """The protocol class uvicorn instantiates per connection, with the settings' bounds. With h11 the
    header size is uvicorn's `h11_max_incomplete_event_size`, which must be `settings.max_header_bytes`."""
    bounds: dict[str, object] = {
        "header_timeout_s": settings.header_timeout_s,
        "max_connections": settings.max_connections,
        "too_many_connections": too_many_connections(settings.retry_after_s),
    }
    if resolve_protocol(settings.http_protocol) == "httptools":
        base: type = BoundedHttpToolsProtocol
        bounds["max_header_bytes"] = settings.max_header_bytes
    else:
        base = BoundedH11Protocol
    return type(base.__name__, (base,), bounds)
