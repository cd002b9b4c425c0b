"""Bounded connections: the HTTP protocol uvicorn runs.

`bounded_h11(...)` is the HTTP protocol uvicorn runs (pure-Python h11; httptools, uvicorn's default when
installed, has no header size limit). It bounds what a client can hold before its request even starts:
- headers larger than `max_header_bytes` get 400 and the connection is closed (h11's event size limit);
- a connection whose request headers are not complete `header_timeout_s` after it opened (or after its
  previous response) is closed: idle and slowly trickled connections cannot pile up;
- beyond `max_connections` open connections, a new one gets 503 with `Connection: close` at once, so
  file descriptors stay bounded whatever the number of sockets a client opens.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

from app.config import default_of

TOO_MANY_CONNECTIONS_BODY = (
    b'{"error": {"type": "overloaded", "message": "too many open connections; retry later", "details": []}}'
)
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: %d\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
    % (default_of("retry_after_s"), len(TOO_MANY_CONNECTIONS_BODY), TOO_MANY_CONNECTIONS_BODY)
)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers and a bound on open connections."""

    header_timeout_s: float  # both set by bounded_h11, from the settings
    max_connections: int

    def __init__(self, *args: object, **kwargs: object):
        self._header_deadline: asyncio.TimerHandle | None = None
        super().__init__(*args, **kwargs)

    @property
    def cycle(self):  # noqa: ANN201 - uvicorn's RequestResponseCycle or None
        return self._cycle

    @cycle.setter
    def cycle(self, value) -> None:  # noqa: ANN001
        """uvicorn sets the cycle when a request's headers are complete: the deadline is met."""
        self._cycle = value
        if value is not None:
            self._cancel_header_deadline()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self._cycle is None or self._cycle.response_complete):
            self._arm_header_deadline()  # the next request's headers get the same time

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_late)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_late(self) -> None:
        self._header_deadline = None
        waiting = self._cycle is None or self._cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()


def bounded_h11(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """The protocol class uvicorn instantiates per connection, with these bounds."""
    bounds = {"header_timeout_s": header_timeout_s, "max_connections": max_connections}
    return type("BoundedH11Protocol", (BoundedH11Protocol,), bounds)
