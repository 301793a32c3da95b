"""What becomes of a callback, and the one table from that to the HTTP answer Runflow gets.

The middleware, the receiver (with or without a store) and the FastAPI dependency all answer
from this table, so the same request gets the same answer everywhere. 2xx tells Runflow the
callback is safe; anything else makes it retry.

Outcomes of a verified callback (:class:`Outcome`), body ``{"status": ...}`` on 2xx:

=====================  =====  ====================================================================
``processed``          200    the handler ran and returned
``unhandled``          200    no handler takes this event (with a store: recorded as
                              ``unhandled``, and run once a handler for its event exists)
``recorded``           200    inbox mode: stored, a worker will run it
``duplicate``          200    already processed: the handler did not run again
``dead``               200    in the dead letter after too many failed tries
``in_progress``        409    another run holds this callback right now: Runflow retries later
``failed``             500    the handler raised (error code ``handler_failed``): Runflow retries
``store_unavailable``  503    the store could not record it: nothing was acknowledged
``queue_unavailable``  503    with a hand-off: recorded, but the queue engine did not take its job;
                              Runflow retries, and the retry queues it again
=====================  =====  ====================================================================

Rejections of a request (before any handler), body ``{"error": code, "detail": text}``:

=====  =========================================================================================
400    ``invalid_payload``: a verified body that is not a callback, an invalid Content-Length;
       ``unexpected_payload``: FastAPI, a callback of another kind than the route takes
401    ``missing_signature``, ``malformed_signature``, ``signature_mismatch``
405    ``method_not_allowed``: any method but POST (with ``Allow: POST``)
408    ``request_timeout``: the body did not arrive within ``body_timeout``
413    ``payload_too_large``
503    ``overloaded``: bodies not yet verified hold their whole budget (Runflow retries)
=====  =========================================================================================

No answer ever holds a secret, a computed signature, payload content or a handler's error text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from runflow_callbacks.errors import (
    InvalidPayloadError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    RunflowCallbackError,
    StoreError,
    VerificationError,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from starlette.types import Receive, Send

__all__ = [
    "ANSWERS",
    "METHOD_NOT_ALLOWED",
    "Outcome",
    "OutcomeStatus",
    "rejection",
    "send_answer",
    "send_method_not_allowed",
    "serve_lifespan",
]

OutcomeStatus = Literal[
    "processed",
    "unhandled",
    "recorded",
    "duplicate",
    "dead",
    "in_progress",
    "failed",
    "store_unavailable",
    "queue_unavailable",
]

# status -> (HTTP status, error code for a non-2xx answer, detail)
_OUTCOMES: Final[dict[str, tuple[int, str | None, str | None]]] = {
    "processed": (200, None, None),
    "unhandled": (200, None, None),
    "recorded": (200, None, "recorded; it will be processed in the background"),
    "duplicate": (200, None, "already processed; the handler did not run again"),
    "dead": (200, None, "recorded in the dead letter after too many failed tries"),
    "in_progress": (
        409,
        "in_progress",
        "this callback is being processed right now; retry later",
    ),
    "failed": (
        500,
        "handler_failed",
        "the callback handler raised an error; Runflow will retry",
    ),
    "store_unavailable": (
        503,
        "store_unavailable",
        "the callback could not be recorded; Runflow will retry",
    ),
    "queue_unavailable": (
        503,
        "queue_unavailable",
        "the callback could not be queued for processing; Runflow will retry",
    ),
}


def _encode(content: dict[str, str]) -> bytes:
    return json.dumps(content).encode()


def _outcome_body(status: str) -> bytes:
    http_status, code, detail = _OUTCOMES[status]
    if http_status < 300:
        content = {"status": status}
        if detail is not None:
            content["detail"] = detail
        return _encode(content)
    assert code is not None
    assert detail is not None
    return _encode({"error": code, "detail": detail})


_BODIES: Final[dict[str, bytes]] = {status: _outcome_body(status) for status in _OUTCOMES}
#: Outcome status -> (HTTP status, encoded JSON body): the table, ready to send.
ANSWERS: Final[dict[str, tuple[int, bytes]]] = {
    status: (row[0], _BODIES[status]) for status, row in _OUTCOMES.items()
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one verified callback; :attr:`http_status` and :meth:`body` are the answer.

    ``key`` and ``attempt`` are set when a store was involved (the idempotency key, and the
    attempt number when a handler ran). ``error`` is the exception a handler raised (logged
    with its traceback, kept in the store as text, never sent).
    """

    status: OutcomeStatus
    key: str | None = None
    attempt: int | None = None
    error: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def http_status(self) -> int:
        """The HTTP status Runflow gets (see the module's table)."""
        return _OUTCOMES[self.status][0]

    @property
    def ok(self) -> bool:
        """True when Runflow is told the callback is safe (a 2xx answer)."""
        return self.http_status < 300

    @property
    def code(self) -> str | None:
        """The error code of a non-2xx answer (``handler_failed``...), None on success."""
        return _OUTCOMES[self.status][1]

    @property
    def detail(self) -> str | None:
        """A short human-readable explanation (None for ``processed`` and ``unhandled``)."""
        return _OUTCOMES[self.status][2]

    def body(self) -> bytes:
        """The JSON answer: ``{"status", "detail"?}`` on 2xx, ``{"error", "detail"}`` otherwise."""
        return _BODIES[self.status]

    def content(self) -> dict[str, str]:
        """The JSON answer as a dict (what :meth:`body` encodes)."""
        decoded: dict[str, str] = json.loads(self.body())
        return decoded


def rejection(error: RunflowCallbackError) -> tuple[int, dict[str, str]]:
    """The HTTP status and JSON body for a request rejected before any handler ran.

    ``{"error": error.code, "detail": str(error)}``: the detail says what failed, never a
    secret, a signature or payload content.
    """
    if isinstance(error, VerificationError):
        status = 401
    elif isinstance(error, PayloadTooLargeError):
        status = 413
    elif isinstance(error, InvalidPayloadError):
        status = 400
    elif isinstance(error, RequestTimeoutError):
        status = 408
    elif isinstance(error, (StoreError, OverloadedError)):
        status = 503
    else:
        status = 500
    return status, {"error": error.code, "detail": str(error)}


#: The 405 answer for any method but POST on a callback path (send it with ``Allow: POST``).
METHOD_NOT_ALLOWED: Final = {
    "error": "method_not_allowed",
    "detail": "Runflow callbacks are delivered with POST",
}
_METHOD_NOT_ALLOWED_BODY: Final = _encode(METHOD_NOT_ALLOWED)
_ALLOW_POST: Final = ((b"allow", b"POST"),)
_JSON: Final = (b"content-type", b"application/json")


async def serve_lifespan(receive: Receive, send: Send) -> None:
    """Answer an ASGI lifespan's startup and shutdown (the caller's block around it is the
    application's lifetime); returns after shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def send_answer(
    send: Send,
    status: int,
    content: dict[str, str] | bytes,
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send a complete JSON response over ASGI (``content`` as a dict, or already encoded)."""
    body = content if isinstance(content, bytes) else _encode(content)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(body)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_method_not_allowed(send: Send) -> None:
    """The 405 answer, with ``Allow: POST``."""
    await send_answer(send, 405, _METHOD_NOT_ALLOWED_BODY, headers=_ALLOW_POST)
