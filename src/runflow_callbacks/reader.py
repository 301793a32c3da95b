"""Read one callback off the wire, sans I/O: headers first, then the body chunk by chunk.

:class:`CallbackReader` is the core every front door shares (the middleware, the receiver and
the FastAPI dependency). Its constructor checks the headers and raises at once, before any body
is read, for a missing, malformed or repeated signature, a ``Content-Length`` over the limit or
an invalid one. :meth:`~CallbackReader.feed` takes each chunk as it arrives and raises
:class:`~runflow_callbacks.errors.PayloadTooLargeError` as soon as the limit is crossed;
:meth:`~CallbackReader.finish` verifies the signature, then parses the verified bytes into a
:class:`~runflow_callbacks.context.CallbackContext`. :func:`read_callback` drives it from an
ASGI ``receive``, and :func:`accept` adds the method check and the answer to a rejection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from runflow_callbacks._log import header_request_id, log_rejection
from runflow_callbacks.answers import rejection, send_answer, send_method_not_allowed
from runflow_callbacks.context import STATE_KEY, CallbackContext
from runflow_callbacks.errors import (
    ClientDisconnectedError,
    InvalidPayloadError,
    MalformedSignatureError,
    MissingSignatureError,
    PayloadTooLargeError,
    RunflowCallbackError,
)
from runflow_callbacks.models import parse_callback
from runflow_callbacks.verifier import parse_signature

if TYPE_CHECKING:
    import logging
    from collections.abc import Awaitable, Callable, Iterable

    from starlette.types import Receive, Scope, Send

    from runflow_callbacks.options import ReceiverOptions
    from runflow_callbacks.verifier import IncrementalVerifier, Verifier

__all__ = ["CallbackReader", "accept", "read_callback"]

_SIGNATURE: Final = b"runflow-signature"
_REQUEST_ID: Final = b"runflow-request-id"
_CONTENT_LENGTH: Final = b"content-length"
_KEPT_HEADERS: Final = {
    _SIGNATURE: "Runflow-Signature",
    _REQUEST_ID: "Runflow-Request-Id",
    b"content-type": "Content-Type",
    b"user-agent": "User-Agent",
}
_MAX_LENGTH_DIGITS: Final = 18


class CallbackReader:
    """Reads one callback: checks the headers, then verifies the body chunk by chunk."""

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
        options: ReceiverOptions,
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
        limit = options.max_body_bytes
        self._limit = limit
        self._clock = options.clock
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
            if not options.allow_unsigned:
                raise MissingSignatureError
            self._expected: bytes | None = None
        else:
            self._expected = parse_signature(signature)
        self._verifier = verifier
        if content_length is not None:
            stripped = content_length.strip()
            if not stripped.isdigit():
                raise InvalidPayloadError("the Content-Length header is not a decimal integer")
            if len(stripped) > _MAX_LENGTH_DIGITS or int(stripped) > limit:
                raise PayloadTooLargeError(limit=limit)

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
                secret = self._incremental.verify_digest(self._expected)
            else:
                secret = self._verifier.verify_digest(body, self._expected)
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


async def read_callback(receive: Receive, reader: CallbackReader) -> CallbackContext:
    """Read the body of one ASGI ``http`` request into ``reader``; return the verified context.

    Raises :class:`~runflow_callbacks.errors.VerificationError`,
    :class:`~runflow_callbacks.errors.PayloadTooLargeError`,
    :class:`~runflow_callbacks.errors.InvalidPayloadError`, or
    :class:`~runflow_callbacks.errors.ClientDisconnectedError` when the client left mid-body.
    """
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnectedError
        reader.feed(message.get("body", b""))
        if not message.get("more_body", False):
            return reader.finish()


async def accept(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    verifier: Verifier,
    options: ReceiverOptions,
    logger: logging.Logger,
    started: float,
    rejected: Callable[[RunflowCallbackError], Awaitable[None]],
) -> CallbackContext | None:
    """The ASGI front half every front door shares: check the method, read and verify the
    callback, answer a rejection (logged once, reported to ``rejected``).

    Returns the context, also stored at ``scope["state"]["runflow_callback"]``; or None when
    the request was answered already (405, 400, 401, 413) or the client left mid-body.
    """
    if scope["method"] != "POST":
        await send_method_not_allowed(send)
        return None
    try:
        reader = CallbackReader(scope["headers"], verifier=verifier, options=options)
        while True:  # read_callback, inlined: this is every request's path
            message = await receive()
            if message["type"] != "http.request":
                logger.debug("runflow callback abandoned: the client disconnected mid-body")
                return None
            reader.feed(message.get("body", b""))
            if not message.get("more_body", False):
                break
        context = reader.finish()
    except RunflowCallbackError as error:
        status, content = rejection(error)
        log_rejection(logger, error, status, header_request_id(scope["headers"]), started)
        await rejected(error)
        await send_answer(send, status, content)
        return None
    scope.setdefault("state", {})[STATE_KEY] = context
    return context
