"""Receive Runflow callbacks in any ASGI application (Starlette, FastAPI, Quart, ...).

:class:`CallbackMiddleware` guards the callback path of an app: it reads the body with a size
limit, verifies it as it arrives (a body of several chunks goes through the incremental
verifier chunk by chunk, a one-chunk body is verified in one call), parses only verified bytes,
and hands the app a :class:`~runflow_callbacks.context.CallbackContext` plus a ``receive`` that
replays the exact body::

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

Rejections are answered from the one table of :mod:`runflow_callbacks.answers` (401, 405,
413, 400); every other path, and every websocket or lifespan scope, passes straight through.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Any, Final

from runflow_callbacks._log import log_outcome
from runflow_callbacks.context import STATE_KEY, CallbackContext, existing_callback, get_callback
from runflow_callbacks.defaults import DEFAULT_CALLBACK_PATH, DEFAULT_MAX_BODY_BYTES
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.options import READER_OPTIONS, ReaderView, resolve
from runflow_callbacks.reader import UnverifiedBudget, accept
from runflow_callbacks.verifier import Verifier

if TYPE_CHECKING:
    from collections.abc import Iterable

    from starlette.types import ASGIApp, Message, Receive, Scope, Send
    from typing_extensions import Unpack

    from runflow_callbacks.errors import RunflowCallbackError
    from runflow_callbacks.options import ReaderArgs, ReceiverOptions
    from runflow_callbacks.verifier import SecretsInput

__all__ = [
    "DEFAULT_CALLBACK_PATH",
    "DEFAULT_MAX_BODY_BYTES",
    "STATE_KEY",
    "CallbackContext",
    "CallbackMiddleware",
    "get_callback",
]

logger = logging.getLogger("runflow_callbacks.asgi")


class CallbackMiddleware(ReaderView):
    """Verify Runflow callbacks before the app sees them (pure ASGI).

    Only ``http`` requests whose path is one of ``path`` (one path or several; default
    ``/callbacks/runflow``) are touched; they must be ``POST`` (405 otherwise), at most
    ``max_body_bytes`` long (413, decided from ``Content-Length`` before reading, or as soon
    as a streamed body crosses the limit) and signed by one of ``secrets`` (401). The body is
    verified chunk by chunk and parsed only once verified (400 when it is not a callback). On
    success the app is called with a :class:`~runflow_callbacks.context.CallbackContext` at
    ``request.state.runflow_callback`` (see :func:`get_callback`) and a ``receive`` that
    replays the exact body, so ``await request.body()`` still works.

    A client that disconnects mid-body ends the request quietly: no app call, no answer.
    Options: the reader options of :class:`~runflow_callbacks.options.ReceiverOptions`
    (``max_body_bytes``, ``allow_unsigned``, ``clock``), as keywords or ``options=``.
    """

    __slots__ = ("app", "budget", "options", "paths", "verifier")

    def __init__(
        self,
        app: ASGIApp,
        *,
        secrets: SecretsInput | Verifier,
        path: str | Iterable[str] = DEFAULT_CALLBACK_PATH,
        options: ReceiverOptions | None = None,
        **changes: Unpack[ReaderArgs],
    ) -> None:
        self.app = app
        self.verifier = secrets if isinstance(secrets, Verifier) else Verifier(secrets)
        self.options = resolve(options, changes, allowed=READER_OPTIONS, who="CallbackMiddleware")
        self.budget = UnverifiedBudget.of(self.options.max_unverified_bytes)
        self.paths = frozenset([path] if isinstance(path, str) else path)
        if not self.paths:
            raise ConfigurationError("CallbackMiddleware needs at least one callback path")

    async def rejected(self, error: RunflowCallbackError) -> None:
        """Called once for each request answered 400, 401 or 413; override to count them."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if existing_callback(scope) is not None:  # an outer middleware verified it already
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        context = await accept(
            scope,
            receive,
            send,
            verifier=self.verifier,
            options=self.options,
            logger=logger,
            started=started,
            rejected=self.rejected,
            budget=self.budget,
        )
        if context is None:
            return
        log_outcome(logger, context, "verified", started)
        await self.app(scope, replaying(context.body, receive), send)


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


# 0.1 exported these plumbing names from here; they live where their names say now.
_MOVED: Final[dict[str, tuple[str, str]]] = {
    "CallbackReader": ("runflow_callbacks.reader", "CallbackReader"),
    "read_callback": ("runflow_callbacks.reader", "read_callback"),
    "ClientDisconnectedError": ("runflow_callbacks.errors", "ClientDisconnectedError"),
    "error_answer": ("runflow_callbacks.answers", "rejection"),
    "send_json": ("runflow_callbacks.answers", "send_answer"),
    "utc_now": ("runflow_callbacks._time", "utc_now"),
    "existing_callback": ("runflow_callbacks.context", "existing_callback"),
}


def __getattr__(name: str) -> Any:
    if name == "CallbackOptions":
        warnings.warn(
            "runflow_callbacks.asgi.CallbackOptions is gone: options are declared once in "
            "runflow_callbacks.options.ReceiverOptions",
            DeprecationWarning,
            stacklevel=2,
        )
        from runflow_callbacks.options import ReceiverOptions  # noqa: PLC0415 - deprecated name

        return ReceiverOptions
    if name in _MOVED:
        module, new = _MOVED[name]
        warnings.warn(
            f"runflow_callbacks.asgi.{name} moved to {module}.{new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(__import__(module, fromlist=[new]), new)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
