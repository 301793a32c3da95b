"""The HTTP server ``runflow-callbacks serve`` runs: uvicorn (h11), bounded for the open internet.

uvicorn bounds idle keep-alive connections and, with ``limit_concurrency``, answers 503 beyond
a number of concurrent connections and requests; it has no deadline for a request's head, so
a client sending its headers one byte at a time (slowloris) holds its connection forever.
:func:`server_config` adds that deadline with a small subclass of uvicorn's h11 protocol: a
connection whose request head is not complete within ``head_timeout`` (from its opening, or
from its previous answer on a keep-alive connection) is answered 408 and closed. The body's
own deadline, and the budget of bytes not yet verified, are the receiver's
(``ReceiverOptions.body_timeout``, ``max_unverified_bytes``).

Needs the ``serve`` extra (uvicorn).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

if TYPE_CHECKING:
    import asyncio
    from datetime import timedelta

    from starlette.types import ASGIApp

__all__ = ["server_config"]

_BODY: Final = json.dumps(
    {"error": "request_timeout", "detail": "the request head did not arrive in time"}
).encode()
_REQUEST_TIMEOUT: Final = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\nconnection: close\r\n\r\n" + _BODY
)


class _HeadDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request head is late."""

    head_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override] # uvicorn's own signature
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_timer()  # the head is complete: the body has its own deadline

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request on this connection gets its own

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _head_late(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        cycle: RequestResponseCycle | None = self.cycle  # None before the first request
        if cycle is None or cycle.response_complete:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def server_config(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    log_level: str,
    head_timeout: timedelta | None,
    max_connections: int | None,
    **uvicorn_options: Any,
) -> uvicorn.Config:
    """The uvicorn configuration of ``serve``: h11 with the head deadline, at most
    ``max_connections`` concurrent connections and requests (503 beyond)."""
    protocol: type[H11Protocol] = H11Protocol
    if head_timeout is not None:
        protocol = type(
            "BoundedH11Protocol",
            (_HeadDeadlineProtocol,),
            {"head_timeout": head_timeout.total_seconds()},
        )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol,
        limit_concurrency=max_connections,
        **uvicorn_options,
    )
