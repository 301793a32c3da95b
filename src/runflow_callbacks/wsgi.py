"""Receive Runflow callbacks in any WSGI application (Flask, Django, Pyramid, Bottle, ...).

:class:`CallbackWSGIMiddleware` is the WSGI twin of
:class:`~runflow_callbacks.asgi.CallbackMiddleware`: the same options, checks and answers. It
reads ``wsgi.input`` in bounded chunks, verifies the body as it arrives with the shared
:class:`~runflow_callbacks.reader.CallbackReader`, parses only verified bytes, and calls the
app with the
:class:`~runflow_callbacks.context.CallbackContext` at ``environ["runflow_callbacks.callback"]``
(see :func:`get_callback`) and a ``wsgi.input`` that replays the exact body::

    def app(environ, start_response):
        context = get_callback(environ)
        assert environ["wsgi.input"].read() == context.body
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [context.event.encode()]

    app = CallbackWSGIMiddleware(app, secrets=["whsec_..."])

Rejections are answered from the one table of :mod:`runflow_callbacks.answers` (405, 413,
401, 400, 408, 503) and logged by the same function as over ASGI; every other path passes
straight through. :class:`EnvironFrontDoor` is the blocking front half it shares with the
Django view decorator (:mod:`runflow_callbacks.django`), whose ``request.META`` is a WSGI
environ too. This module imports no web framework.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar, Final

from runflow_callbacks._log import log_outcome, log_rejection
from runflow_callbacks.answers import METHOD_NOT_ALLOWED, rejection
from runflow_callbacks.context import CallbackContext
from runflow_callbacks.defaults import DEFAULT_CALLBACK_PATH, DEFAULT_SIGNATURE_HEADER
from runflow_callbacks.errors import (
    ClientDisconnectedError,
    ConfigurationError,
    RequestTimeoutError,
    RunflowCallbackError,
)
from runflow_callbacks.options import READER_OPTIONS, ReaderView, resolve
from runflow_callbacks.reader import CallbackReader, UnverifiedBudget
from runflow_callbacks.verifier import Verifier

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from typing_extensions import Unpack

    from runflow_callbacks.options import ReaderArgs, ReceiverOptions
    from runflow_callbacks.verifier import SecretsInput

__all__ = [
    "CHUNK_BYTES",
    "ENVIRON_KEY",
    "Answer",
    "CallbackWSGIMiddleware",
    "EnvironFrontDoor",
    "callback_paths",
    "environ_callback",
    "environ_headers",
    "get_callback",
]

#: Key of the verified :class:`CallbackContext` in the WSGI environ.
ENVIRON_KEY: Final = "runflow_callbacks.callback"
#: The most bytes asked of ``wsgi.input`` in one read.
CHUNK_BYTES: Final = 64 * 1024

_UNPREFIXED: Final = {"CONTENT_LENGTH": b"content-length", "CONTENT_TYPE": b"content-type"}


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete JSON answer of a blocking front door (a rejection, from the one table).

    ``quiet`` marks an answer nobody reads (the client left): not worth a log line.
    """

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    quiet: bool = False

    @classmethod
    def of(
        cls,
        status: int,
        content: Mapping[str, str],
        *headers: tuple[str, str],
        quiet: bool = False,
    ) -> Answer:
        """``content`` encoded exactly as the ASGI front doors encode it."""
        return cls(status, json.dumps(content).encode(), headers, quiet)

    def wsgi_headers(self) -> list[tuple[str, str]]:
        """The WSGI response headers: JSON, its length, then the extra ones (``Allow``)."""
        return [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(self.body))),
            *self.headers,
        ]

    def send(self, start_response: StartResponse) -> list[bytes]:
        """Answer a WSGI request: call ``start_response`` and return the body iterable."""
        start_response(f"{self.status} {HTTPStatus(self.status).phrase}", self.wsgi_headers())
        return [self.body]


_NOT_POST: Final = Answer.of(405, METHOD_NOT_ALLOWED, ("Allow", "POST"))
# Nobody is left to read this one: it only ends a request whose client went away (or whose
# input could not be read) without a traceback. Not a rejection: not logged, not counted.
_CLIENT_LEFT: Final = Answer.of(
    400,
    {
        "error": ClientDisconnectedError.code,
        "detail": "the request body could not be read to its end",
    },
    quiet=True,
)


def environ_headers(
    environ: Mapping[str, Any], *, signature_header: str = DEFAULT_SIGNATURE_HEADER
) -> list[tuple[bytes, bytes]]:
    """The request headers of a WSGI environ (or Django's ``request.META``) as the reader
    takes them: lowercase names and latin-1 values, as bytes.

    Servers join a repeated header with commas; a 64-digit signature never holds one, so a
    joined ``Runflow-Signature`` (or ``signature_header``) is split back and rejected as sent
    more than once. An empty
    ``CONTENT_LENGTH`` (some servers' way of saying none) is no header.
    """
    headers: list[tuple[bytes, bytes]] = []
    signature_key = "HTTP_" + signature_header.upper().replace("-", "_")
    for key, value in environ.items():
        if not isinstance(value, str):
            continue
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower().encode("latin-1")
        elif key in _UNPREFIXED and value:
            name = _UNPREFIXED[key]
        else:
            continue
        if key == signature_key and "," in value:
            headers += [(name, part.encode("latin-1", "replace")) for part in value.split(",")]
        else:
            headers.append((name, value.encode("latin-1", "replace")))
    return headers


def callback_paths(path: str | Iterable[str], *, who: str) -> frozenset[str]:
    """The callback paths a front door guards: one path or several, at least one."""
    paths = frozenset([path] if isinstance(path, str) else path)
    if not paths:
        raise ConfigurationError(f"{who} needs at least one callback path")
    return paths


def environ_callback(environ: Mapping[str, Any]) -> CallbackContext | None:
    """The context a front door already stored in ``environ``, if any."""
    known = environ.get(ENVIRON_KEY)
    return known if isinstance(known, CallbackContext) else None


def get_callback(environ: Mapping[str, Any]) -> CallbackContext:
    """The :class:`CallbackContext` :class:`CallbackWSGIMiddleware` stored in ``environ``.

    Raises ``LookupError`` when the request did not go through the middleware.
    """
    context = environ_callback(environ)
    if context is None:
        raise LookupError(
            "no verified Runflow callback on this request: is CallbackWSGIMiddleware "
            "configured for this path?"
        )
    return context


class _SharedBudget(UnverifiedBudget):
    """An :class:`UnverifiedBudget` that the threads of a WSGI server can share."""

    __slots__ = ("lock",)

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.lock = threading.Lock()

    def take(self, size: int) -> None:
        with self.lock:
            super().take(size)

    def give(self, size: int) -> None:
        with self.lock:
            super().give(size)


class EnvironFrontDoor(ReaderView):
    """The blocking front half of a front door over a WSGI environ: the secrets, the reader
    options and the budget of unverified bytes, and :meth:`accept`.

    Shared by :class:`CallbackWSGIMiddleware` and the Django view decorator; their threads
    share one budget (``max_unverified_bytes``), safely.
    """

    __slots__ = ("budget", "options", "verifier")
    #: Where the outcome of each request is logged.
    logger: ClassVar[logging.Logger] = logging.getLogger("runflow_callbacks.wsgi")

    def __init__(
        self,
        *,
        secrets: SecretsInput | Verifier,
        options: ReceiverOptions | None,
        changes: ReaderArgs,
        who: str,
    ) -> None:
        self.verifier = secrets if isinstance(secrets, Verifier) else Verifier(secrets)
        self.options = resolve(options, changes, allowed=READER_OPTIONS, who=who)
        limit = self.options.max_unverified_bytes
        self.budget = None if limit is None else _SharedBudget(limit)

    def rejected(self, error: RunflowCallbackError) -> None:
        """Called once for each request answered 400, 401, 408, 413 or 503; override to
        count them."""

    def accept(
        self,
        environ: Mapping[str, Any],
        read_body: Callable[[CallbackReader], None],
    ) -> CallbackContext | Answer:
        """Check the method, read the body with ``read_body`` (which feeds it to the reader
        and raises our errors), verify and parse it; or the answer to a rejection (logged
        once, reported to :meth:`rejected`).

        The headers are checked before ``read_body`` runs: a ``Content-Length`` over
        ``max_body_bytes`` is 413 unread. :class:`ClientDisconnectedError` from ``read_body``
        is answered 400 ``client_disconnected`` quietly (nobody is left to read it).
        """
        if environ.get("REQUEST_METHOD") != "POST":
            return _NOT_POST
        started = time.perf_counter()
        budget = self.budget
        reader: CallbackReader | None = None
        try:
            headers = environ_headers(environ, signature_header=self.options.signature_header)
            if budget is None:
                reader = CallbackReader(headers, verifier=self.verifier, options=self.options)
            else:
                with budget.lock:  # the constructor takes the declared length inline
                    reader = CallbackReader(
                        headers, verifier=self.verifier, options=self.options, budget=budget
                    )
            read_body(reader)
            context = reader.finish()
        except ClientDisconnectedError:
            self.logger.debug("runflow callback abandoned: the body could not be read to its end")
            return _CLIENT_LEFT
        except RunflowCallbackError as error:
            status, content = rejection(error)
            request_id = environ.get("HTTP_RUNFLOW_REQUEST_ID")
            log_rejection(self.logger, error, status, request_id, started)
            self.rejected(error)
            return Answer.of(status, content)
        finally:
            if reader is not None:
                if budget is None:
                    reader.release()
                else:
                    with budget.lock:
                        reader.release()
        log_outcome(self.logger, context, "verified", started)
        return context


class CallbackWSGIMiddleware(EnvironFrontDoor):
    """Verify Runflow callbacks before a WSGI app sees them.

    Only requests whose ``PATH_INFO`` (the path the app routes on) is one of ``path`` (one
    path or several; default ``/callbacks/runflow``) are touched; they must be ``POST`` (405
    with ``Allow: POST`` otherwise), at most ``max_body_bytes`` long (413, decided from
    ``CONTENT_LENGTH`` before reading, or as soon as a body without one crosses the limit)
    and signed by one of ``secrets`` (401). The body is read from ``wsgi.input`` in chunks of
    at most :data:`CHUNK_BYTES`, never past ``CONTENT_LENGTH``; without one it is read to its
    end only when the server says the input ends there (``wsgi.input_terminated``, as servers
    that decode chunked bodies do), else it is empty. Verified bytes that are not a callback
    are 400.

    On success the app is called with the :class:`~runflow_callbacks.context.CallbackContext`
    at ``environ["runflow_callbacks.callback"]`` (see :func:`get_callback`), and
    ``wsgi.input`` replaced by an ``io.BytesIO`` of the exact body (``CONTENT_LENGTH`` set to
    its length), so the framework behind reads the body as usual.

    A client that leaves mid-body, or an input that fails to read, is answered 400
    ``client_disconnected``: no app call, no rejection logged. ``body_timeout`` is checked
    after each read (408): a read that blocks outright is bounded by the server's own socket
    timeout. Options: the reader options of
    :class:`~runflow_callbacks.options.ReceiverOptions`, as keywords or ``options=``.
    """

    __slots__ = ("app", "paths")

    def __init__(
        self,
        app: WSGIApplication,
        *,
        secrets: SecretsInput | Verifier,
        path: str | Iterable[str] = DEFAULT_CALLBACK_PATH,
        options: ReceiverOptions | None = None,
        **changes: Unpack[ReaderArgs],
    ) -> None:
        super().__init__(secrets=secrets, options=options, changes=changes, who=type(self).__name__)
        self.app = app
        self.paths = callback_paths(path, who=type(self).__name__)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(paths={sorted(self.paths)!r}, secrets={self.verifier!r}, "
            f"max_body_bytes={self.max_body_bytes}, allow_unsigned={self.allow_unsigned})"
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") not in self.paths or environ_callback(environ) is not None:
            return self.app(environ, start_response)
        outcome = self.accept(environ, lambda reader: self._read_input(environ, reader))
        if isinstance(outcome, Answer):
            return outcome.send(start_response)
        environ[ENVIRON_KEY] = outcome
        environ["wsgi.input"] = io.BytesIO(outcome.body)
        environ["CONTENT_LENGTH"] = str(len(outcome.body))
        environ["wsgi.input_terminated"] = True  # a BytesIO ends where the body does
        return self.app(environ, start_response)

    def _read_input(self, environ: WSGIEnvironment, reader: CallbackReader) -> None:
        stream = environ.get("wsgi.input")
        if stream is None:
            return
        declared = environ.get("CONTENT_LENGTH")
        remaining: int | None
        if declared:
            remaining = int(declared)  # the reader checked it: decimal, within the limit
        elif environ.get("wsgi.input_terminated"):
            remaining = None  # read to the end the server marks
        else:
            remaining = 0  # PEP 3333: without a length, reading further may block forever
        timeout = self.options.body_timeout
        deadline = None if timeout is None else time.monotonic() + timeout.total_seconds()
        while remaining is None or remaining > 0:
            size = CHUNK_BYTES if remaining is None else min(CHUNK_BYTES, remaining)
            try:
                chunk = stream.read(size)
            except Exception:  # noqa: BLE001 - each server raises its own error when a client leaves
                raise ClientDisconnectedError from None
            if not chunk:
                if remaining is None:
                    return
                raise ClientDisconnectedError
            reader.feed(chunk)
            if remaining is not None:
                remaining -= len(chunk)
            if deadline is not None and time.monotonic() > deadline:
                assert timeout is not None
                raise RequestTimeoutError(timeout_s=timeout.total_seconds())
