"""One log line per callback, whatever front door or worker handled it.

Each caller passes its own logger (``runflow_callbacks.asgi``, ``.receiver``, ``.fastapi``,
``.processing``), so a line says where it was decided; all are children of
``runflow_callbacks``. Values that came from a request are made printable first, so that a
newline in a signed event name cannot forge a log line. Never the payload, the body or the
signature.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from runflow_callbacks.answers import Outcome
    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.errors import RunflowCallbackError

__all__ = ["header_request_id", "log_outcome", "log_rejection", "printable"]

_MAX_LOGGED_CHARS: Final = 128
_REQUEST_ID: Final = b"runflow-request-id"


def printable(value: str | None) -> str | None:
    """A value from a request made safe for a log line (no control characters, bounded)."""
    if value is None or (value.isprintable() and len(value) <= _MAX_LOGGED_CHARS):
        return value
    return repr(value[:_MAX_LOGGED_CHARS])


def _latency_ms(started: float | None) -> float | None:
    return None if started is None else (time.perf_counter() - started) * 1000


def log_rejection(
    logger: logging.Logger,
    error: RunflowCallbackError,
    status: int,
    request_id: str | None,
    started: float,
) -> None:
    """One WARNING line for a rejected request (the code, never the signature or body)."""
    if not logger.isEnabledFor(logging.WARNING):
        return
    latency_ms = _latency_ms(started)
    logger.warning(
        "runflow callback rejected: outcome=%s status=%d request_id=%s latency_ms=%.1f",
        error.code,
        status,
        printable(request_id),
        latency_ms,
        extra={
            "runflow_outcome": error.code,
            "runflow_request_id": request_id,
            "runflow_latency_ms": latency_ms,
        },
    )


def log_outcome(
    logger: logging.Logger,
    context: CallbackContext,
    outcome: str,
    started: float | None,
    *,
    error: BaseException | None = None,
    of: Outcome | None = None,
) -> None:
    """One line per callback: event, id, outcome, secret label, request id, key, latency.

    INFO normally; ERROR with the traceback when a handler raised ``error`` (the only record
    of that failure). ``started`` is the ``time.perf_counter()`` the latency is measured from
    (None for a run that no request waits for: the inbox worker, retry, reconcile). ``of``, the
    outcome, supplies the key and attempt a store gave a context that came without them.
    """
    level = logging.INFO if error is None else logging.ERROR
    if not logger.isEnabledFor(level):
        return
    latency_ms = _latency_ms(started)
    key, attempt = context.key, context.attempt
    if of is not None and key is None:
        key, attempt = of.key, of.attempt
    logger.log(
        level,
        "runflow callback event=%s id=%s outcome=%s secret=%s request_id=%s key=%s attempt=%s "
        "source=%s latency_ms=%s",
        printable(context.event),
        printable(context.subject_id),
        outcome,
        context.secret_label,
        printable(context.request_id),
        printable(key),
        attempt,
        context.source,
        "-" if latency_ms is None else f"{latency_ms:.1f}",
        exc_info=error,
        extra={
            "runflow_event": context.event,
            "runflow_id": context.subject_id,
            "runflow_outcome": outcome,
            "runflow_secret": context.secret_label,
            "runflow_request_id": context.request_id,
            "runflow_key": key,
            "runflow_attempt": attempt,
            "runflow_source": context.source,
            "runflow_latency_ms": latency_ms,
        },
    )


def header_request_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """``Runflow-Request-Id`` from raw ASGI headers, for logging a rejection."""
    for name, value in headers:
        if name.lower() == _REQUEST_ID:
            return value.decode("latin-1")
    return None
