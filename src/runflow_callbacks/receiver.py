"""An ASGI endpoint that verifies Runflow callbacks and runs a handler per event.

::

    receiver = CallbackReceiver(secrets=["whsec_..."])

    @receiver.on("batch.succeeded", "batch.partial_succeeded")
    async def store_results(context: CallbackContext) -> None:
        ...  # context.payload is a BatchCallbackPayload

    @receiver.on_any
    def everything_else(context: CallbackContext) -> None:  # sync: runs in a thread pool
        ...

    app = Starlette(routes=[Route("/callbacks/runflow", receiver)])

A handler takes one argument, the :class:`~runflow_callbacks.asgi.CallbackContext` (the typed
payload is ``context.payload``); it may be a plain function (run in a worker thread) or a
coroutine function (awaited). The handler registered for the callback's event runs; the
``on_any`` handler runs for every event that has none of its own.

Answers: the checks of :class:`~runflow_callbacks.asgi.CallbackMiddleware` (401, 405, 413,
400), then 200 ``{"status": "processed"}`` when the handler returned, 500 when it raised (the
exception is logged, and Runflow retries), and 200 ``{"status": "unhandled"}`` with an INFO log
when no handler matches the event (unknown events are normal as Runflow evolves).

Every verified callback goes through :meth:`CallbackReceiver.process`, the single dispatch
point. Give the receiver a ``store`` and it becomes exactly-once (see
:mod:`runflow_callbacks.processing`)::

    receiver = CallbackReceiver(secrets=[...], store=open_store("sqlite:///./callbacks.db"))

Each verified callback is then recorded durably before any answer, its handler runs once per
idempotency key, a duplicate of a processed callback answers 200 without running it again, and
a concurrent duplicate answers 409 so that Runflow retries. With ``mode="inbox"`` the answer is
200 as soon as the callback is recorded, and the worker started by :meth:`CallbackReceiver.worker`
(or by the ASGI lifespan when the receiver is the whole app) runs the handlers, retrying failures
with backoff. A store that cannot be reached answers 503: nothing is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Final, TypeVar, Union

import anyio.to_thread

from runflow_callbacks.asgi import (
    DEFAULT_MAX_BODY_BYTES,
    CallbackContext,
    CallbackOptions,
    existing_callback,
    log_outcome,
    send_json,
    utc_now,
)
from runflow_callbacks.errors import ConfigurationError, RunflowCallbackError, StoreError
from runflow_callbacks.processing import (
    DEFAULT_LEASE,
    DEFAULT_MAX_TRIES,
    CallbackProcessor,
    Mode,
    ProcessingContext,
    ProcessingHandler,
)
from runflow_callbacks.stores import IncomingCallback, KeyFunction, default_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from datetime import datetime

    from starlette.types import Receive, Scope, Send

    from runflow_callbacks.stores import CallbackStore
    from runflow_callbacks.verifier import SecretsInput, Verifier

__all__ = [
    "FAILED",
    "PROCESSED",
    "STORE_UNAVAILABLE",
    "UNHANDLED",
    "CallbackReceiver",
    "Handler",
    "Outcome",
    "as_processing_handler",
    "context_from_processing",
]

Handler = Union[Callable[[CallbackContext], Awaitable[object]], Callable[[CallbackContext], object]]  # noqa: UP007 - a runtime alias must work on Python 3.10
"""A callback handler: ``handler(context)``, sync or async; its return value is ignored."""

H = TypeVar("H", bound=Handler)

logger = logging.getLogger("runflow_callbacks.receiver")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one verified callback, and the HTTP answer Runflow gets for it.

    ``status`` names the outcome (``"processed"``, ``"unhandled"``, ``"failed"``; a store may
    add its own such as ``"duplicate"`` or ``"in_progress"``), ``http_status`` is the answer
    (2xx tells Runflow the callback is safe, anything else makes it retry), ``detail`` an
    optional human-readable text and ``error`` the exception a handler raised (logged, never
    sent).
    """

    status: str
    http_status: int = 200
    detail: str | None = None
    error: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when Runflow is told the callback was accepted (a 2xx answer)."""
        return 200 <= self.http_status < 300

    def body(self) -> bytes:
        """The JSON answer: ``{"status": ...}`` on success, ``{"error", "detail"}`` otherwise."""
        if self.ok:
            content = {"status": self.status}
            if self.detail is not None:
                content["detail"] = self.detail
        else:
            content = {"error": self.status, "detail": self.detail or self.status}
        return json.dumps(content).encode()


#: The handler returned: 200 ``{"status": "processed"}``.
PROCESSED: Final = Outcome("processed")
#: No handler for the event: 200 ``{"status": "unhandled"}``.
UNHANDLED: Final = Outcome("unhandled")
#: The handler raised: 500, so that Runflow retries (see :meth:`Outcome.body`).
FAILED: Final = Outcome(
    "handler_failed", 500, "the callback handler raised an error; Runflow will retry"
)
#: The store could not record the callback: 503, nothing was acknowledged.
STORE_UNAVAILABLE: Final = Outcome(
    "store_unavailable", 503, "the callback could not be recorded; Runflow will retry"
)


@functools.lru_cache(maxsize=64)
def _encoded(outcome: Outcome) -> bytes:
    return outcome.body()


def _is_async(handler: object) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - an object with an async __call__
    return inspect.iscoroutinefunction(call)


class CallbackReceiver(CallbackOptions):
    """An ASGI endpoint that verifies callbacks and dispatches each to its handler.

    Mount it as a Starlette ``Route`` (``Route("/callbacks/runflow", receiver)``), with
    FastAPI's ``app.add_route`` / ``app.mount``, or serve it alone as the whole ASGI app.

    Options (keyword-only) as for :class:`~runflow_callbacks.asgi.CallbackMiddleware`:
    ``secrets`` (one, several during a rotation, or a ``Verifier``), ``max_body_bytes``
    (default 16 MiB), ``allow_unsigned`` (default False) and ``clock``. With a ``store``
    (see :func:`~runflow_callbacks.stores.open_store`) callbacks are received exactly once;
    ``mode`` (``"sync"`` or ``"inbox"``), ``lease``, ``max_tries``, ``backoff`` and ``key``
    configure the :class:`~runflow_callbacks.processing.CallbackProcessor` it then drives
    (``receiver.processor``).
    """

    def __init__(
        self,
        *,
        secrets: SecretsInput | Verifier,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        allow_unsigned: bool = False,
        clock: Callable[[], datetime] = utc_now,
        store: CallbackStore | None = None,
        mode: Mode = "sync",
        lease: timedelta = DEFAULT_LEASE,
        max_tries: int | None = DEFAULT_MAX_TRIES,
        backoff: Callable[[int], timedelta] | None = None,
        key: KeyFunction = default_key,
    ) -> None:
        super().__init__(
            secrets=secrets,
            max_body_bytes=max_body_bytes,
            allow_unsigned=allow_unsigned,
            clock=clock,
        )
        self._handlers: dict[str, tuple[Handler, bool]] = {}
        self._fallback: tuple[Handler, bool] | None = None
        self.store = store
        self.processor: CallbackProcessor | None = None
        if store is not None:
            self.processor = CallbackProcessor(
                store,
                self._run_stored,
                mode=mode,
                lease=lease,
                max_tries=max_tries,
                backoff=backoff,
                clock=clock,
                key=key,
            )
        elif mode != "sync":
            raise ConfigurationError("mode='inbox' needs a store to keep the inbox in")
        self._worker_running = False

    # --- registration --------------------------------------------------------------------

    def on(self, event: str, *events: str) -> Callable[[H], H]:
        """Register the decorated function as the handler of one or more events.

        >>> receiver = CallbackReceiver(secrets="whsec_example")
        >>> @receiver.on("batch.succeeded", "batch.partial_succeeded")
        ... async def handle(context: CallbackContext) -> None: ...
        """
        names = (event, *events)
        for name in names:
            _check_event(name)
            if name in self._handlers:
                raise ConfigurationError(f"a handler for {name!r} is already registered")

        def register(handler: H) -> H:
            _check_handler(handler)
            entry = (handler, _is_async(handler))
            for name in names:
                if name in self._handlers:
                    raise ConfigurationError(f"a handler for {name!r} is already registered")
                self._handlers[name] = entry
            return handler

        return register

    def on_any(self, handler: H) -> H:
        """Register the decorated function for every event that has no handler of its own."""
        _check_handler(handler)
        if self._fallback is not None:
            raise ConfigurationError("an on_any handler is already registered")
        self._fallback = (handler, _is_async(handler))
        return handler

    def handler_for(self, event: str | None) -> Handler | None:
        """The handler that would run for ``event`` (None when the callback is unhandled)."""
        entry = self._lookup(event)
        return None if entry is None else entry[0]

    def _lookup(self, event: str | None) -> tuple[Handler, bool] | None:
        entry = self._handlers.get(event) if event is not None else None
        return self._fallback if entry is None else entry

    @property
    def events(self) -> Iterable[str]:
        """The events that have a handler of their own."""
        return tuple(self._handlers)

    # --- dispatch ------------------------------------------------------------------------

    async def process(self, context: CallbackContext) -> Outcome:
        """Handle one verified callback; the single dispatch point.

        Without a store: :data:`PROCESSED` when the handler returned, :data:`UNHANDLED` when no
        handler matches the event, and a failed outcome (500, with ``error`` set) when it
        raised. With a store, the processor's outcome (``processed``, ``duplicate``,
        ``recorded``, ``dead``: 200; ``in_progress``: 409; ``failed``: 500) or
        :data:`STORE_UNAVAILABLE` (503). It never raises for a handler's or a store's error.
        """
        processor = self.processor
        if processor is None:
            return await self.run_handler(context)
        try:
            result = await processor.handle(
                IncomingCallback.from_context(context, key=processor.key),
                payload=context.payload,
            )
        except StoreError as error:
            logger.error("runflow callback not recorded: the store failed (%s)", error)  # noqa: TRY400 - the store error says enough; no traceback
            return STORE_UNAVAILABLE
        if result.status == "processed":
            return PROCESSED
        return Outcome(result.status, result.http_status, result.detail, result.error)

    async def rejected(self, error: RunflowCallbackError) -> None:
        """Count a rejected request in the store (``stats().rejected``), when there is one."""
        if self.store is None:
            return
        try:
            await self.store.note_rejected()
        except StoreError as store_error:
            logger.warning("could not count a rejected callback: %s", store_error)

    async def run_handler(self, context: CallbackContext) -> Outcome:
        """Run the handler registered for ``context.event`` (no store involved)."""
        entry = self._lookup(context.event)
        if entry is None:
            return UNHANDLED
        handler, is_async = entry
        try:
            if is_async:
                await handler(context)  # type: ignore[misc] # checked by _is_async at registration
            else:
                await anyio.to_thread.run_sync(handler, context)
        except Exception as error:  # noqa: BLE001 - any handler error becomes a 500 and a retry
            return Outcome(FAILED.status, FAILED.http_status, FAILED.detail, error)
        return PROCESSED

    async def _run_stored(self, processing: ProcessingContext) -> None:
        """The processor's handler: run the handler on the context rebuilt from the record."""
        outcome = await self.run_handler(context_from_processing(processing))
        if outcome.error is not None:
            raise outcome.error

    @contextlib.asynccontextmanager
    async def worker(
        self, *, poll_interval: timedelta | None = None
    ) -> AsyncIterator[CallbackProcessor | None]:
        """Run the inbox worker for the duration of the block (inbox mode only).

        Use it in your application's lifespan when the receiver is mounted as a route::

            @contextlib.asynccontextmanager
            async def lifespan(app):
                async with receiver.worker():
                    yield

        Outside inbox mode it does nothing. When the receiver is the whole ASGI app, its own
        lifespan runs the worker.
        """
        processor = self.processor
        if processor is None or processor.mode != "inbox" or self._worker_running:
            yield processor
            return
        stop = asyncio.Event()
        task = asyncio.create_task(
            processor.run_worker(stop=stop, poll_interval=poll_interval or timedelta(seconds=1))
        )
        self._worker_running = True
        try:
            yield processor
        finally:
            stop.set()
            self._worker_running = False
            await task

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                async with self.worker():
                    await _not_http(scope, receive, send)
                return
            await _not_http(scope, receive, send)
            return
        started = time.perf_counter()
        context = existing_callback(scope)  # set when a CallbackMiddleware runs in front
        if context is None:
            context = await self.accept(scope, receive, send, started=started)
            if context is None:
                return
        outcome = await self.process(context)
        log_outcome(context, outcome.status, started, error=outcome.error)
        body = _encoded(outcome) if outcome.error is None else outcome.body()
        await send_json(send, outcome.http_status, body)


def context_from_processing(processing: ProcessingContext) -> CallbackContext:
    """The :class:`CallbackContext` of a stored callback (inbox worker, retry, reconcile)."""
    record = processing.record
    return CallbackContext(
        payload=processing.payload,
        body=record.body,
        secret_id=record.secret_id,
        secret_label=record.secret_label,
        request_id=record.request_id,
        headers=dict(record.headers),
        received_at=record.received_at,
        signed=record.secret_id is not None or record.secret_label is not None,
    )


def as_processing_handler(handler: Handler) -> ProcessingHandler:
    """Adapt a receiver handler (taking a :class:`CallbackContext`) for a bare
    :class:`~runflow_callbacks.processing.CallbackProcessor` (``inbox retry``, ``reconcile``)."""
    _check_handler(handler)
    if _is_async(handler):

        async def run_async(processing: ProcessingContext) -> None:
            await handler(context_from_processing(processing))  # type: ignore[misc] # checked by _is_async

        return run_async

    def run_sync(processing: ProcessingContext) -> None:
        handler(context_from_processing(processing))

    return run_sync


def _check_event(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"an event name must be a non-empty str, not {name!r}")


def _check_handler(handler: object) -> None:
    if not callable(handler):
        raise ConfigurationError(
            f"a handler must be a function taking the CallbackContext, not {handler!r}"
        )


async def _not_http(scope: Scope, receive: Receive, send: Send) -> None:
    """Lifespan is acknowledged (the receiver can be the whole app); websockets are refused."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
