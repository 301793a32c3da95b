"""Receive Runflow callbacks in any ASGI application (Starlette, FastAPI, Quart, ...).

:class:`CallbackMiddleware` guards the callback path of an app: it reads the body with a size
limit, verifies it as it arrives (a body of several chunks goes through the incremental
verifier chunk by chunk, a one-chunk body is verified in one call), parses only verified bytes,
and hands the app a :class:`CallbackContext` plus a ``receive`` that replays the exact body::

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def callback(request: Request) -> JSONResponse:
        context = get_callback(request)
        return JSONResponse({"received": context.payload.event})

    app = CallbackMiddleware(
        Starlette(routes=[Route("/callbacks/runflow", callback, methods=["POST"])]),
        secrets=["whsec_..."],
    )

Answers on the callback path (each a small JSON body ``{"error": code, "detail": text}`` that
never holds a secret or a computed signature):

=====  ==============================================================================
401    missing, malformed or mismatching ``Runflow-Signature`` (or several of them)
405    any method but ``POST`` (with ``Allow: POST``)
413    a ``Content-Length`` or a streamed body over ``max_body_bytes``
400    a verified body that is not a JSON object, or an invalid ``Content-Length``
=====  ==============================================================================

Every other path, and every websocket or lifespan scope, passes straight through.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Final

from runflow_callbacks.errors import (
    ConfigurationError,
    InvalidPayloadError,
    MalformedSignatureError,
    MissingSignatureError,
    PayloadTooLargeError,
    RunflowCallbackError,
    VerificationError,
)
from runflow_callbacks.models import parse_callback
from runflow_callbacks.verifier import SecretsInput, Verifier, _verify_digest, parse_signature

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from starlette.requests import HTTPConnection
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from runflow_callbacks.models import CallbackPayload
    from runflow_callbacks.verifier import IncrementalVerifier

__all__ = [
    "DEFAULT_CALLBACK_PATH",
    "DEFAULT_MAX_BODY_BYTES",
    "STATE_KEY",
    "CallbackContext",
    "CallbackMiddleware",
    "CallbackOptions",
    "CallbackReader",
    "ClientDisconnectedError",
    "error_answer",
    "get_callback",
    "read_callback",
    "send_json",
    "utc_now",
]

DEFAULT_CALLBACK_PATH: Final = "/callbacks/runflow"
#: 16 MiB: a batch callback carries every item's output inline, so it can be large.
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
#: Key of the :class:`CallbackContext` in ``scope["state"]`` (``request.state.runflow_callback``).
STATE_KEY: Final = "runflow_callback"

logger = logging.getLogger("runflow_callbacks.asgi")

_SIGNATURE: Final = b"runflow-signature"
_REQUEST_ID: Final = b"runflow-request-id"
_CONTENT_LENGTH: Final = b"content-length"
_CONTENT_TYPE: Final = b"content-type"
_USER_AGENT: Final = b"user-agent"
_KEPT_HEADERS: Final = {
    _SIGNATURE: "Runflow-Signature",
    _REQUEST_ID: "Runflow-Request-Id",
    _CONTENT_TYPE: "Content-Type",
    _USER_AGENT: "User-Agent",
}
_MAX_LENGTH_DIGITS: Final = 18
_MAX_LOGGED_CHARS: Final = 128
_JSON_HEADERS: Final = (b"content-type", b"application/json")


def utc_now() -> datetime:
    """The current time in UTC (the default ``clock``)."""
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class CallbackContext:
    """A verified callback, as the middleware, the receiver and the FastAPI dependency see it.

    ``payload`` is parsed from ``body``, the exact bytes that were verified. ``secret_id`` and
    ``secret_label`` name the secret that matched (both None for an unsigned callback accepted
    with ``allow_unsigned=True``, where ``signed`` is False). ``headers`` holds the
    Runflow-relevant request headers (``Runflow-Signature``, ``Runflow-Request-Id``,
    ``Content-Type``, ``User-Agent``) as sent, decoded as latin-1. ``received_at`` comes from
    the configured clock.
    """

    payload: CallbackPayload
    body: bytes
    secret_id: str | None
    secret_label: str | None
    request_id: str | None
    headers: dict[str, str]
    received_at: datetime
    signed: bool

    @property
    def event(self) -> str | None:
        """The payload's ``event`` (None in the older shape without it)."""
        return self.payload.event

    @property
    def subject_id(self) -> str | None:
        """The ``batch_id`` or ``run_id`` of the callback, as a string."""
        return self.payload.subject_id

    def __repr__(self) -> str:
        # The body and payload may hold customer data, the headers a signature: leave them out.
        return (
            f"CallbackContext(event={self.event!r}, subject_id={self.subject_id!r}, "
            f"secret_label={self.secret_label!r}, request_id={self.request_id!r}, "
            f"signed={self.signed!r}, body_bytes={len(self.body)})"
        )


def get_callback(request: HTTPConnection) -> CallbackContext:
    """The :class:`CallbackContext` the middleware stored for ``request``.

    Raises ``LookupError`` when the request did not go through :class:`CallbackMiddleware`
    (or :class:`~runflow_callbacks.receiver.CallbackReceiver`).
    """
    context = existing_callback(request.scope)
    if context is None:
        raise LookupError(
            "no verified Runflow callback on this request: is CallbackMiddleware configured "
            "for this path?"
        )
    return context


class ClientDisconnectedError(Exception):
    """The client went away before the whole body arrived (nothing to answer, nothing to run)."""


class CallbackReader:
    """Reads one callback: checks the headers, then verifies the body chunk by chunk.

    This is the core shared by the middleware, the receiver and the FastAPI dependency. The
    constructor checks the headers and raises at once (before any body is read) for a missing,
    malformed or repeated signature, a ``Content-Length`` over the limit or an invalid one.
    :meth:`feed` takes each chunk as it arrives and raises :class:`PayloadTooLargeError` as soon
    as the limit is crossed; :meth:`finish` verifies the signature, then parses the verified
    bytes into a :class:`CallbackContext`.
    """

    __slots__ = (
        "_buffer",
        "_clock",
        "_expected",
        "_first",
        "_incremental",
        "_limit",
        "_verifier",
        "headers",
        "received",
        "request_id",
    )

    def __init__(
        self,
        raw_headers: Iterable[tuple[bytes, bytes]],
        *,
        verifier: Verifier,
        max_body_bytes: int,
        allow_unsigned: bool,
        clock: Callable[[], datetime],
    ) -> None:
        headers: dict[str, str] = {}
        signature: str | None = None
        content_length: bytes | None = None
        for name, value in raw_headers:
            lowered = name.lower()
            kept = _KEPT_HEADERS.get(lowered)
            if kept is not None:
                text = value.decode("latin-1")
                if lowered == _SIGNATURE:
                    if signature is not None:
                        raise MalformedSignatureError("multiple", length=0)
                    signature = text
                headers[kept] = text
            elif lowered == _CONTENT_LENGTH:
                if content_length is not None and content_length != value:
                    raise InvalidPayloadError("conflicting Content-Length headers")
                content_length = value
        self.headers = headers
        self.request_id = headers.get("Runflow-Request-Id")
        self._limit = max_body_bytes
        self._clock = clock
        # A callback of one chunk (the usual case) is kept as is and verified in one call when
        # it completes. From the second chunk on, every chunk goes to the incremental verifier
        # as it arrives and to one growing buffer, so a large body is held once plus one copy
        # at the end, never as a list of chunks plus their join.
        self._first = b""
        self._buffer: bytearray | None = None
        self._incremental: IncrementalVerifier | None = None
        self.received = 0
        # The header is parsed once, here: a malformed one is rejected before reading the body.
        if signature is None:
            if not allow_unsigned:
                raise MissingSignatureError
            self._expected: bytes | None = None
        else:
            self._expected = parse_signature(signature)
        self._verifier = verifier
        if content_length is not None:
            stripped = content_length.strip()
            if not stripped.isdigit():
                raise InvalidPayloadError("the Content-Length header is not a decimal integer")
            if len(stripped) > _MAX_LENGTH_DIGITS or int(stripped) > max_body_bytes:
                raise PayloadTooLargeError(limit=max_body_bytes)

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the body (verified as it arrives, never beyond the limit)."""
        if not chunk:
            return
        self.received += len(chunk)
        if self.received > self._limit:
            self._first, self._buffer = b"", None
            raise PayloadTooLargeError(limit=self._limit, received=self.received)
        if self._buffer is not None:
            if self._incremental is not None:
                self._incremental.update(chunk)
            self._buffer += chunk
        elif self._first:
            if self._expected is not None:
                self._incremental = self._verifier.incremental()
                self._incremental.update(self._first)
                self._incremental.update(chunk)
            self._buffer = bytearray(self._first)
            self._buffer += chunk
            self._first = b""
        else:
            self._first = bytes(chunk)

    def finish(self) -> CallbackContext:
        """Verify the whole body, then parse it; return the context of the callback."""
        if self._buffer is None:
            body = self._first
        else:
            body = bytes(self._buffer)
            self._buffer = None  # freed before parsing, which makes its own copies
        self._first = b""
        secret = None
        if self._expected is not None:
            if self._incremental is not None:  # fed chunk by chunk as they arrived
                secret = self._incremental._match(self._expected)
            else:
                secret = _verify_digest(body, self._expected, self._verifier.secrets)
        if not body:
            raise InvalidPayloadError("the callback body is empty")
        return CallbackContext(
            payload=parse_callback(body),
            body=body,
            secret_id=None if secret is None else secret.id,
            secret_label=None if secret is None else secret.name,
            request_id=self.request_id,
            headers=self.headers,
            received_at=self._clock(),
            signed=secret is not None,
        )


async def read_callback(
    scope: Scope, receive: Receive, *, reader: CallbackReader
) -> CallbackContext:
    """Read the body of one ASGI ``http`` request into ``reader``; return the verified context.

    Raises :class:`~runflow_callbacks.errors.VerificationError`, :class:`PayloadTooLargeError`,
    :class:`InvalidPayloadError`, or :class:`ClientDisconnectedError` when the client left
    mid-body.
    """
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnectedError
        reader.feed(message.get("body", b""))
        if not message.get("more_body", False):
            return reader.finish()


def error_answer(error: RunflowCallbackError) -> tuple[int, dict[str, str]]:
    """The HTTP status and JSON body for a rejected callback: ``{"error", "detail"}``.

    The detail says what failed, never a secret, a signature or payload content.
    """
    if isinstance(error, VerificationError):
        status = 401
    elif isinstance(error, PayloadTooLargeError):
        status = 413
    elif isinstance(error, InvalidPayloadError):
        status = 400
    else:
        status = 500
    code = getattr(error, "code", "error")
    return status, {"error": code, "detail": str(error)}


async def send_json(
    send: Send,
    status: int,
    content: dict[str, str] | bytes,
    *,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send a complete JSON response (``content`` as a dict, or already encoded)."""
    body = content if isinstance(content, bytes) else json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                _JSON_HEADERS,
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


_METHOD_NOT_ALLOWED: Final = json.dumps(
    {"error": "method_not_allowed", "detail": "Runflow callbacks are delivered with POST"}
).encode()
_ALLOW_POST: Final = ((b"allow", b"POST"),)


def printable(value: str | None) -> str | None:
    """A header value made safe for a log line (no control characters, bounded length)."""
    if value is None or (value.isprintable() and len(value) <= _MAX_LOGGED_CHARS):
        return value
    return repr(value[:_MAX_LOGGED_CHARS])


def log_rejection(
    error: RunflowCallbackError, status: int, request_id: str | None, started: float
) -> None:
    """One WARNING line for a rejected callback (the code, never the signature or body)."""
    latency_ms = (time.perf_counter() - started) * 1000
    logger.warning(
        "runflow callback rejected: outcome=%s status=%d request_id=%s latency_ms=%.1f",
        getattr(error, "code", "error"),
        status,
        printable(request_id),
        latency_ms,
        extra={
            "runflow_outcome": getattr(error, "code", "error"),
            "runflow_request_id": request_id,
            "runflow_latency_ms": latency_ms,
        },
    )


def log_outcome(
    context: CallbackContext,
    outcome: str,
    started: float,
    *,
    error: BaseException | None = None,
) -> None:
    """One line per callback: event, id, outcome, secret label, request id, latency.

    INFO normally; ERROR with the traceback when a handler raised ``error``. Never the payload,
    the body or the signature.
    """
    level = logging.INFO if error is None else logging.ERROR
    if not logger.isEnabledFor(level):
        return
    latency_ms = (time.perf_counter() - started) * 1000
    logger.log(
        level,
        "runflow callback event=%s id=%s outcome=%s secret=%s request_id=%s latency_ms=%.1f",
        context.event,
        context.subject_id,
        outcome,
        context.secret_label,
        printable(context.request_id),
        latency_ms,
        exc_info=error,
        extra={
            "runflow_event": context.event,
            "runflow_id": context.subject_id,
            "runflow_outcome": outcome,
            "runflow_secret": context.secret_label,
            "runflow_request_id": context.request_id,
            "runflow_latency_ms": latency_ms,
        },
    )


def header_request_id(scope: Scope) -> str | None:
    """``Runflow-Request-Id`` of a request, for logging a rejection."""
    for name, value in scope["headers"]:
        if name.lower() == _REQUEST_ID:
            return str(value.decode("latin-1"))
    return None


def _check_limit(max_body_bytes: object) -> int:
    if (
        not isinstance(max_body_bytes, int)
        or isinstance(max_body_bytes, bool)
        or max_body_bytes < 1
    ):
        raise ConfigurationError(
            f"max_body_bytes must be a positive int (bytes), got {max_body_bytes!r}"
        )
    return max_body_bytes


class CallbackOptions:
    """The options and checks shared by the middleware, the receiver and the FastAPI dependency.

    ``secrets`` is one secret, several during a rotation, or a
    :class:`~runflow_callbacks.verifier.Verifier`; ``max_body_bytes`` bounds the body (16 MiB
    by default); ``allow_unsigned`` accepts a request *without* ``Runflow-Signature`` (a
    present but wrong one is still rejected); ``clock`` gives each context its
    ``received_at``.
    """

    __slots__ = ("allow_unsigned", "clock", "max_body_bytes", "verifier")

    def __init__(
        self,
        *,
        secrets: SecretsInput | Verifier,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        allow_unsigned: bool = False,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.verifier = secrets if isinstance(secrets, Verifier) else Verifier(secrets)
        self.max_body_bytes = _check_limit(max_body_bytes)
        self.allow_unsigned = allow_unsigned
        self.clock = clock

    def reader(self, raw_headers: Iterable[tuple[bytes, bytes]]) -> CallbackReader:
        """A :class:`CallbackReader` for one request with these options."""
        return CallbackReader(
            raw_headers,
            verifier=self.verifier,
            max_body_bytes=self.max_body_bytes,
            allow_unsigned=self.allow_unsigned,
            clock=self.clock,
        )

    async def accept(
        self, scope: Scope, receive: Receive, send: Send, *, started: float
    ) -> CallbackContext | None:
        """Check the method, read and verify the callback; answer any rejection.

        Returns the context (also stored at ``scope["state"]["runflow_callback"]``), or None
        when the request was already answered (405, 400, 401, 413) or the client left
        mid-body. ``started`` is the ``time.perf_counter()`` value latencies are measured from.
        """
        if scope["method"] != "POST":
            await send_json(send, 405, _METHOD_NOT_ALLOWED, headers=_ALLOW_POST)
            return None
        try:
            context = await read_callback(scope, receive, reader=self.reader(scope["headers"]))
        except ClientDisconnectedError:
            logger.debug("runflow callback abandoned: the client disconnected mid-body")
            return None
        except RunflowCallbackError as error:
            status, content = error_answer(error)
            log_rejection(error, status, header_request_id(scope), started)
            await self.rejected(error)
            await send_json(send, status, content)
            return None
        scope.setdefault("state", {})[STATE_KEY] = context
        return context

    async def rejected(self, error: RunflowCallbackError) -> None:
        """Called once for each request answered 400, 401 or 413; override to count them."""


class CallbackMiddleware(CallbackOptions):
    """Verify Runflow callbacks before the app sees them (pure ASGI).

    Only ``http`` requests whose path is one of ``paths`` are touched; they must be ``POST``
    (405 otherwise), at most ``max_body_bytes`` long (413, decided from ``Content-Length``
    before reading, or as soon as a streamed body crosses the limit) and signed by one of
    ``secrets`` (401). The body is verified chunk by chunk and parsed only once verified (400
    when it is not a JSON object). On success the app is called with a
    :class:`CallbackContext` at ``request.state.runflow_callback`` (see :func:`get_callback`)
    and a ``receive`` that replays the exact body, so ``await request.body()`` still works.

    A client that disconnects mid-body ends the request quietly: no app call, no answer.

    Options (keyword-only): ``secrets`` (one, or several during a rotation, or a
    :class:`~runflow_callbacks.verifier.Verifier`), ``path`` (one path or several; default
    ``/callbacks/runflow``), ``max_body_bytes`` (default 16 MiB), ``allow_unsigned`` (accept a
    request *without* ``Runflow-Signature``; a present but wrong one is still 401) and
    ``clock`` (returns the ``received_at`` of each context).
    """

    __slots__ = ("app", "paths")

    def __init__(
        self,
        app: ASGIApp,
        *,
        secrets: SecretsInput | Verifier,
        path: str | Iterable[str] = DEFAULT_CALLBACK_PATH,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        allow_unsigned: bool = False,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        super().__init__(
            secrets=secrets,
            max_body_bytes=max_body_bytes,
            allow_unsigned=allow_unsigned,
            clock=clock,
        )
        self.app = app
        self.paths = frozenset([path] if isinstance(path, str) else path)
        if not self.paths:
            raise ConfigurationError("CallbackMiddleware needs at least one callback path")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if existing_callback(scope) is not None:  # an outer middleware verified it already
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        context = await self.accept(scope, receive, send, started=started)
        if context is None:
            return
        log_outcome(context, "verified", started)
        await self.app(scope, replaying(context.body, receive), send)


def existing_callback(scope: Scope) -> CallbackContext | None:
    """The context an outer middleware already stored for this request, if any."""
    state = scope.get("state")
    if state:
        known = state.get(STATE_KEY)
        if isinstance(known, CallbackContext):
            return known
    return None


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once as the whole request, then delegates."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
