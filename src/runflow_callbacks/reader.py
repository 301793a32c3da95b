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

import asyncio
import functools
import io
from typing import TYPE_CHECKING, Final

from runflow_callbacks._log import header_request_id, log_rejection
from runflow_callbacks._timers import Deadline
from runflow_callbacks.answers import rejection, send_answer, send_method_not_allowed
from runflow_callbacks.context import STATE_KEY, CallbackContext
from runflow_callbacks.defaults import DEFAULT_SIGNATURE_HEADER
from runflow_callbacks.errors import (
    ClientDisconnectedError,
    InvalidPayloadError,
    MalformedSignatureError,
    MissingSignatureError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
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

__all__ = ["CallbackReader", "UnverifiedBudget", "accept", "read_callback", "within"]

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


@functools.lru_cache(maxsize=16)
def _lowered(header: str) -> bytes:
    """A configured signature header's name as ASGI servers send it."""
    return header.lower().encode("latin-1")


class UnverifiedBudget:
    """The bytes of bodies not yet verified that one front door holds at once.

    Unauthenticated clients can send bodies slowly or stop one byte short; the budget bounds
    the memory they can pin together. A request declaring a ``Content-Length`` takes its whole
    share before its body is read; a chunked one takes it chunk by chunk. Beyond the budget the
    answer is 503 (:class:`~runflow_callbacks.errors.OverloadedError`), so Runflow retries.
    """

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @classmethod
    def of(cls, limit: int | None) -> UnverifiedBudget | None:
        """A budget of ``limit`` bytes, or None (no budget) for None."""
        return None if limit is None else cls(limit)

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes, or raise :class:`OverloadedError` holding nothing."""
        if self.held + size > self.limit:
            raise OverloadedError(budget=self.limit)
        self.held += size

    def give(self, size: int) -> None:
        """Give back bytes taken with :meth:`take`."""
        self.held -= size


class CallbackReader:
    """Reads one callback: checks the headers, then verifies the body chunk by chunk.

    With a ``budget``, the reader holds its bytes there until :meth:`release` (which the
    front doors call whatever the outcome).
    """

    __slots__ = (
        "_budget",
        "_buffer",
        "_clock",
        "_expected",
        "_first",
        "_held",
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
        budget: UnverifiedBudget | None = None,
    ) -> None:
        headers: dict[str, str] = {}
        signature: str | None = None
        content_length: bytes | None = None
        signature_name = options.signature_header
        signature_key = (
            _SIGNATURE if signature_name == DEFAULT_SIGNATURE_HEADER else _lowered(signature_name)
        )
        for name, value in raw_headers:
            lowered = name.lower()
            if lowered == signature_key:
                if signature is not None:
                    raise MalformedSignatureError("multiple", length=0)
                signature = value.decode("latin-1")
                headers[_KEPT_HEADERS.get(lowered, signature_name)] = signature
                continue
            kept = _KEPT_HEADERS.get(lowered)
            if kept is not None:
                headers[kept] = value.decode("latin-1")
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
        # as it arrives and into a BytesIO, whose getvalue() hands its own buffer over as the
        # body without a copy: a large body is held once, never as chunks plus their join.
        self._first = b""
        self._buffer: io.BytesIO | None = None
        self._incremental: IncrementalVerifier | None = None
        self.received = 0
        self._budget = budget
        self._held = 0
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
            if budget is not None:
                declared = int(stripped)
                if budget.held + declared > budget.limit:  # UnverifiedBudget.take, inlined
                    raise OverloadedError(budget=budget.limit)
                budget.held += declared
                self._held = declared

    def release(self) -> None:
        """Give back what this reader holds of the budget (idempotent)."""
        if self._held and self._budget is not None:
            self._budget.held -= self._held
        self._held = 0

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the body (verified as it arrives, never beyond the limit)."""
        if not chunk:
            return
        self.received += len(chunk)
        if self.received > self._limit:
            self._first, self._buffer = b"", None
            raise PayloadTooLargeError(limit=self._limit, received=self.received)
        if self.received > self._held and self._budget is not None:
            self._budget.take(self.received - self._held)
            self._held = self.received
        if self._buffer is not None:
            if self._incremental is not None:
                self._incremental.update(chunk)
            self._buffer.write(chunk)
        elif self._first:
            if self._expected is not None:
                self._incremental = self._verifier.incremental()
                self._incremental.update(self._first)
                self._incremental.update(chunk)
            self._buffer = io.BytesIO()
            self._buffer.write(self._first)
            self._buffer.write(chunk)
            self._first = b""
        else:
            self._first = bytes(chunk)

    def unverified_body(self) -> bytes:
        """The body bytes read so far (all of them after a refused :meth:`finish`); empty once
        the body went beyond the size limit. For keeping a rejected request, never for use."""
        return self._first if self._buffer is None else self._buffer.getvalue()

    def finish(self) -> CallbackContext:
        """Verify the whole body, then parse it; return the context of the callback."""
        if self._buffer is None:
            body = self._first
        else:
            body = self._buffer.getvalue()  # the buffer itself, not a copy
            self._buffer = None
        self._first = b""
        secret = None
        try:
            if self._expected is not None:
                if self._incremental is not None:  # fed chunk by chunk as they arrived
                    secret = self._incremental.verify_digest(self._expected)
                else:
                    secret = self._verifier.verify_digest(body, self._expected)
            if not body:
                raise InvalidPayloadError("the callback body is empty")
            payload = parse_callback(body)
        except RunflowCallbackError:
            self._first = body  # for unverified_body(): a receiver may keep what it refused
            raise
        return CallbackContext(
            payload=payload,
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
    budget: UnverifiedBudget | None = None,
    keep: Callable[[RunflowCallbackError, Scope, CallbackReader | None], None] | None = None,
) -> CallbackContext | None:
    """The ASGI front half every front door shares: check the method, read and verify the
    callback, answer a rejection (logged once, reported to ``rejected``).

    Returns the context, also stored at ``scope["state"]["runflow_callback"]``; or None when
    the request was answered already (405, 400, 401, 408, 413, 503) or the client left
    mid-body. The body must arrive within ``options.body_timeout``; while it does, its bytes
    are held in ``budget``. ``keep``, when given, is called with each rejection, the scope and
    the reader (None when the headers were refused), to keep the refused request.
    """
    if scope["method"] != "POST":
        await send_method_not_allowed(send)
        return None
    reader: CallbackReader | None = None
    deadline: _Deadline | None = None
    try:
        reader = CallbackReader(scope["headers"], verifier=verifier, options=options, budget=budget)
        if options.body_timeout is not None:
            deadline = _Deadline(options.body_timeout.total_seconds())
        # The body loop is written out here rather than called: one coroutine level less on
        # every request's path.
        while True:
            message = await receive()
            if message["type"] != "http.request":
                logger.debug("runflow callback abandoned: the client disconnected mid-body")
                return None
            reader.feed(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if deadline is not None:
            deadline.cancel()
        context = reader.finish()
    except asyncio.CancelledError:
        if deadline is None or not deadline.expired:
            raise
        await _refuse(deadline.error(), scope, send, logger, started, rejected, keep, reader)
        return None
    except RunflowCallbackError as error:
        await _refuse(error, scope, send, logger, started, rejected, keep, reader)
        return None
    finally:
        if deadline is not None:
            deadline.cancel()
        if reader is not None:
            reader.release()
    scope.setdefault("state", {})[STATE_KEY] = context
    return context


async def _refuse(  # noqa: PLR0917 - the private tail of accept(), called twice
    error: RunflowCallbackError,
    scope: Scope,
    send: Send,
    logger: logging.Logger,
    started: float,
    rejected: Callable[[RunflowCallbackError], Awaitable[None]],
    keep: Callable[[RunflowCallbackError, Scope, CallbackReader | None], None] | None,
    reader: CallbackReader | None,
) -> None:
    """Answer a rejection: logged once, reported to ``rejected`` (and ``keep``), then sent."""
    status, content = rejection(error)
    log_rejection(logger, error, status, header_request_id(scope["headers"]), started)
    if keep is not None:
        keep(error, scope, reader)
    await rejected(error)
    await send_answer(send, status, content)


class _Deadline(Deadline):
    """The body deadline: a :class:`~runflow_callbacks._timers.Deadline` whose expiry is
    answered 408."""

    __slots__ = ()

    def error(self) -> RequestTimeoutError:
        """The timeout as our error, the cancellation it used taken back."""
        self.taken_back()
        return RequestTimeoutError(timeout_s=self.seconds)


async def within(seconds: float, reading: Awaitable[bool]) -> bool:
    """``await reading``, or :class:`RequestTimeoutError` after ``seconds``."""
    deadline = _Deadline(seconds)
    try:
        return await reading
    except asyncio.CancelledError:
        if not deadline.expired:
            raise
        raise deadline.error() from None
    finally:
        deadline.cancel()
