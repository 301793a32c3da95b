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

A handler takes one argument, the :class:`~runflow_callbacks.context.CallbackContext` (the
typed payload is ``context.payload``); it may be a plain function (run in a worker thread) or
a coroutine function (awaited). The handler registered for the callback's event runs; the
``on_batch`` (or ``on_run``) handler for a batch (or run) callback whose event has none of its
own, and the ``on_any`` handler for anything left.

One pipeline, with or without a store: read and verify (the checks of
:class:`~runflow_callbacks.asgi.CallbackMiddleware`: 405, 413, 401, 400) → run (directly, or
through the exactly-once :class:`~runflow_callbacks.processing.CallbackProcessor` when a
``store`` is given) → one log line → the answer from :mod:`runflow_callbacks.answers`. The same
request gets the same answer either way: 200 ``processed`` when the handler returned, 200
``unhandled`` when no handler takes the event, 500 ``handler_failed`` when it raised (logged
once with the traceback; Runflow retries). A store adds what only a store can know: 200
``duplicate``, 409 ``in_progress``, 200 ``recorded`` in inbox mode, 200 ``dead``, and 503 when
it cannot record the callback (nothing acknowledged)::

    receiver = CallbackReceiver(secrets=[...], store=open_store("sqlite:///./callbacks.db"))

With ``mode="inbox"`` the worker started by :meth:`CallbackReceiver.worker` (or by the ASGI
lifespan when the receiver is the whole app) runs the handlers, retrying failures with backoff.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final, overload

from runflow_callbacks._log import log_outcome
from runflow_callbacks.answers import ANSWERS, Outcome, send_answer, serve_lifespan
from runflow_callbacks.context import existing_callback
from runflow_callbacks.errors import ConfigurationError, StoreError
from runflow_callbacks.handlers import Handler, HandlerTable
from runflow_callbacks.options import ReaderView, resolve
from runflow_callbacks.processing import CallbackProcessor
from runflow_callbacks.reader import UnverifiedBudget, accept
from runflow_callbacks.rejected import DEFAULT_KEEP_REJECTED_BYTES, RejectedKeeper
from runflow_callbacks.verifier import Verifier

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
    from datetime import timedelta

    from starlette.types import Receive, Scope, Send
    from typing_extensions import Unpack

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.errors import RunflowCallbackError
    from runflow_callbacks.handlers import BatchH, H, RunH
    from runflow_callbacks.handoff import HandOff
    from runflow_callbacks.metrics import CallbackMetrics
    from runflow_callbacks.models import BatchEvent, KnownEvent, PayloadKind, RunEvent
    from runflow_callbacks.options import ReceiverArgs, ReceiverOptions
    from runflow_callbacks.reader import CallbackReader
    from runflow_callbacks.stores import CallbackStore
    from runflow_callbacks.tracing import CallbackTracing
    from runflow_callbacks.verifier import SecretsInput

__all__ = [
    "FAILED",
    "PROCESSED",
    "REJECTIONS_SAVED_EVERY_SECONDS",
    "STORE_UNAVAILABLE",
    "UNHANDLED",
    "CallbackReceiver",
    "Handler",
    "Outcome",
]

logger = logging.getLogger("runflow_callbacks.receiver")

#: The handler returned: 200 ``{"status": "processed"}``.
PROCESSED: Final = Outcome("processed")
#: No handler for the event: 200 ``{"status": "unhandled"}``.
UNHANDLED: Final = Outcome("unhandled")
#: The handler raised: 500 ``{"error": "handler_failed", ...}``, so that Runflow retries.
FAILED: Final = Outcome("failed")
#: The store could not record the callback: 503, nothing was acknowledged.
STORE_UNAVAILABLE: Final = Outcome("store_unavailable")
#: Rejected requests are added to the store's count at most this often (one write).
REJECTIONS_SAVED_EVERY_SECONDS: Final = 5.0


class CallbackReceiver(ReaderView):
    """An ASGI endpoint that verifies callbacks and dispatches each to its handler.

    Mount it as a Starlette ``Route`` (``Route("/callbacks/runflow", receiver)``), with
    FastAPI's ``app.add_route`` / ``app.mount``, or serve it alone as the whole ASGI app.

    ``secrets`` is one secret, several during a rotation, or a
    :class:`~runflow_callbacks.verifier.Verifier`. With a ``store`` (see
    :func:`~runflow_callbacks.stores.open_store`) callbacks are received exactly once through
    ``receiver.processor``. With ``metrics`` (a
    :class:`~runflow_callbacks.metrics.CallbackMetrics`) it counts every answer, rejection,
    handler run and store call there; with ``tracing`` (a
    :class:`~runflow_callbacks.tracing.CallbackTracing`) each callback is a span. Every option of
    :class:`~runflow_callbacks.options.ReceiverOptions` may be given as a keyword argument, or
    all at once as ``options=``. With a store, ``keep_rejected=N`` keeps the last ``N``
    refused requests there (``keep_rejected_bytes`` of bodies at most; see
    :mod:`runflow_callbacks.rejected`), to look at and replay. With a store, ``hand_off`` (a
    :class:`~runflow_callbacks.handoff.HandOff`) queues each recorded callback in a queue
    engine whose workers run the handlers (see :mod:`runflow_callbacks.handoff`).
    """

    def __init__(
        self,
        *,
        secrets: SecretsInput | Verifier,
        store: CallbackStore | None = None,
        metrics: CallbackMetrics | None = None,
        tracing: CallbackTracing | None = None,
        options: ReceiverOptions | None = None,
        keep_rejected: int = 0,
        keep_rejected_bytes: int = DEFAULT_KEEP_REJECTED_BYTES,
        hand_off: HandOff | None = None,
        **changes: Unpack[ReceiverArgs],
    ) -> None:
        self.verifier = secrets if isinstance(secrets, Verifier) else Verifier(secrets)
        self.options = resolve(options, changes, who="CallbackReceiver")
        self.budget = UnverifiedBudget.of(self.options.max_unverified_bytes)
        self.handlers = HandlerTable()
        #: The :class:`~runflow_callbacks.metrics.CallbackMetrics` this receiver counts in.
        self.metrics = metrics
        if metrics is not None:
            metrics.know_secrets(self.verifier)
            self.handlers.timer = metrics.handler_seconds.observe
            if store is not None:
                store = metrics.timed_store(store)
        #: The :class:`~runflow_callbacks.tracing.CallbackTracing` spans go to, when given.
        self.tracing = tracing
        if tracing is not None:
            self.handlers.tracing = tracing
            if store is not None:
                store = tracing.traced_store(store)
        self.store = store
        self.processor: CallbackProcessor | None = None
        if store is not None:
            self.processor = CallbackProcessor(
                store,
                self.handlers,
                options=self.options,
                on_run=None if metrics is None else metrics.ran,
                hand_off=hand_off,
            )
        elif hand_off is not None:
            raise ConfigurationError("hand_off needs a store to record the callbacks in")
        elif self.options.mode != "sync":
            raise ConfigurationError("mode='inbox' needs a store to keep the inbox in")
        self._worker_running = False
        #: Requests answered 400, 401 or 413 since start, by error code (kept in memory).
        self.rejections: collections.Counter[str] = collections.Counter()
        self._unsaved = 0
        self._saved_at = time.monotonic()
        self._saving: asyncio.Task[None] | None = None
        self._save_timer: asyncio.TimerHandle | None = None
        #: The rejected requests gathered for the store (``keep_rejected``), or None.
        self.keeper: RejectedKeeper | None = None
        if keep_rejected:
            if store is None:
                raise ConfigurationError("keep_rejected needs a store to keep them in")
            self.keeper = RejectedKeeper(keep_rejected, max_bytes=keep_rejected_bytes)

    # --- registration --------------------------------------------------------------------

    @overload
    def on(
        self, event: BatchEvent, *events: BatchEvent, allow_unknown: bool = False
    ) -> Callable[[BatchH], BatchH]: ...
    @overload
    def on(
        self, event: RunEvent, *events: RunEvent, allow_unknown: bool = False
    ) -> Callable[[RunH], RunH]: ...
    @overload
    def on(
        self, event: KnownEvent, *events: KnownEvent, allow_unknown: bool = False
    ) -> Callable[[H], H]: ...
    @overload
    def on(self, event: str, *events: str, allow_unknown: bool) -> Callable[[H], H]: ...

    def on(
        self, event: str, *events: str, allow_unknown: bool = False
    ) -> Callable[[Handler[Any]], Handler[Any]]:
        """Register the decorated function as the handler of one or more events.

        A handler of batch events only may take a ``CallbackContext[BatchCallbackPayload]``,
        of run events only a ``CallbackContext[RunCallbackPayload]``, of a mix a bare
        ``CallbackContext``. An event name this version does not know (a typo) raises
        :class:`~runflow_callbacks.errors.ConfigurationError`, unless ``allow_unknown=True``.

        >>> receiver = CallbackReceiver(secrets="whsec_example")
        >>> @receiver.on("batch.succeeded", "batch.partial_succeeded")
        ... async def handle(context: CallbackContext[BatchCallbackPayload]) -> None: ...
        """
        return self.handlers.on(event, *events, allow_unknown=allow_unknown)

    def on_batch(self, handler: BatchH) -> BatchH:
        """Register the decorated function for every batch callback whose event has no
        handler of its own (see :meth:`HandlerTable.on_batch
        <runflow_callbacks.handlers.HandlerTable.on_batch>`)."""
        return self.handlers.on_batch(handler)

    def on_run(self, handler: RunH) -> RunH:
        """Register the decorated function for every run callback whose event has no
        handler of its own."""
        return self.handlers.on_run(handler)

    def on_any(self, handler: H) -> H:
        """Register the decorated function for every callback no other handler takes."""
        return self.handlers.on_any(handler)

    def handler_for(self, event: str | None, kind: PayloadKind | None = None) -> Handler | None:
        """The handler that would run for ``event`` of a payload of ``kind`` (worked out from
        a known event when not given); None when the callback is unhandled."""
        return self.handlers.handler_for(event, kind)

    @property
    def events(self) -> Iterable[str]:
        """The events that have a handler of their own."""
        return self.handlers.events

    # --- the pipeline --------------------------------------------------------------------

    async def process(self, context: CallbackContext) -> Outcome:
        """Run one verified callback and say what became of it; it never raises for a
        handler's or a store's error (see the module docstring for the outcomes)."""
        if self.processor is None:
            return await self.handlers.run(context)
        try:
            return await self.processor.handle(context)
        except StoreError as error:
            logger.error("runflow callback not recorded: the store failed (%s)", error)  # noqa: TRY400 - the store error says enough; no traceback
            return STORE_UNAVAILABLE

    async def rejected(self, error: RunflowCallbackError) -> None:
        """Called once for each request answered 400, 401, 408, 413 or 503. Counted in memory
        (:attr:`rejections`, by code) and, with a store, added to ``stats().rejected`` (with the
        requests kept by ``keep_rejected``) in one write every
        :data:`REJECTIONS_SAVED_EVERY_SECONDS` at most: a flood of forged requests costs no
        store write per request. Override to count them elsewhere."""
        self.rejections[error.code] += 1
        if self.metrics is not None:
            self.metrics.refused(error.code)
        if self.store is None:
            return
        self._unsaved += 1
        if self._saving is None and self._save_timer is None:
            wait = REJECTIONS_SAVED_EVERY_SECONDS - (time.monotonic() - self._saved_at)
            if wait <= 0:
                self._start_saving()
            else:  # one timer per interval: what is gathered meanwhile goes in one write
                self._save_timer = asyncio.get_running_loop().call_later(wait, self._start_saving)

    def _keep(
        self, error: RunflowCallbackError, scope: Scope, reader: CallbackReader | None
    ) -> None:
        """Gather one refused request for the store (``keep_rejected``)."""
        assert self.keeper is not None
        self.keeper.add(
            error,
            path=scope.get("path", ""),
            raw_headers=scope["headers"],
            reader=reader,
            at=self.options.clock(),
        )

    def _start_saving(self) -> None:
        self._save_timer = None
        if self._saving is None:
            self._saving = asyncio.create_task(self._save_rejections())

    async def _save_rejections(self) -> None:
        store, keeper = self.store, self.keeper
        count, self._unsaved = self._unsaved, 0
        kept = [] if keeper is None else keeper.take()
        self._saved_at = time.monotonic()
        try:
            if store is not None and count:
                await store.note_rejected(count)
                count = 0
            if store is not None and keeper is not None and kept:
                await store.keep_rejected(kept, keep=keeper.keep)
        except StoreError as store_error:
            self._unsaved += count  # what was not written goes with the next write
            if keeper is not None:
                keeper.give_back(kept)
            logger.warning(
                "could not save the rejected requests (%d counted, %d kept): %s",
                count,
                len(kept),
                store_error,
            )
        finally:
            self._saving = None

    async def flush_rejections(self) -> None:
        """Write the rejections counted (and kept) since the last write to the store now
        (shutdown)."""
        if self._save_timer is not None:
            self._save_timer.cancel()
            self._save_timer = None
        saving = self._saving
        if saving is not None:
            await saving
        if self._unsaved or (self.keeper is not None and len(self.keeper)):
            await self._save_rejections()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        if self.tracing is not None:
            await self._traced(self.tracing, scope, receive, send)
            return
        started = time.perf_counter()
        context = await self._read(scope, receive, send, started)
        if context is None:
            return
        outcome = await self.process(context)
        self._account(context, outcome, started)
        status, body = ANSWERS[outcome.status]
        await send_answer(send, status, body)

    async def _read(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        started: float,
        rejected: Callable[[RunflowCallbackError], Awaitable[None]] | None = None,
    ) -> CallbackContext | None:
        # Set when a CallbackMiddleware runs in front; most requests have no state at all.
        context = existing_callback(scope) if "state" in scope else None
        if context is not None:
            return context
        return await accept(
            scope,
            receive,
            send,
            verifier=self.verifier,
            options=self.options,
            logger=logger,
            started=started,
            rejected=self.rejected if rejected is None else rejected,
            budget=self.budget,
            keep=None if self.keeper is None else self._keep,
        )

    def _account(self, context: CallbackContext, outcome: Outcome, started: float) -> None:
        """The one log line, and the metrics, of a callback's answer."""
        log_outcome(logger, context, outcome.status, started, error=outcome.error, of=outcome)
        if self.metrics is not None:
            self.metrics.answered(context, outcome)

    async def _traced(
        self, tracing: CallbackTracing, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """:meth:`__call__` with spans (see :mod:`runflow_callbacks.tracing`)."""
        started = time.perf_counter()
        with tracing.span("callback") as span:
            refused: list[str] = []

            async def rejected(error: RunflowCallbackError) -> None:
                refused.append(error.code)
                await self.rejected(error)

            with tracing.span("verify"):
                context = await self._read(scope, receive, send, started, rejected)
            if context is None:
                if refused:
                    tracing.refused(span, refused[0])
                return
            outcome = await self.process(context)
            tracing.describe(span, context, outcome)
            self._account(context, outcome, started)
            with tracing.span("answer"):
                status, body = ANSWERS[outcome.status]
                await send_answer(send, status, body)

    # --- lifecycle -----------------------------------------------------------------------

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
        task = asyncio.create_task(processor.run_worker(stop=stop, poll_interval=poll_interval))
        self._worker_running = True
        try:
            yield processor
        finally:
            stop.set()
            self._worker_running = False
            await task
            await self.flush_rejections()

    @contextlib.asynccontextmanager
    async def _flushing(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.flush_rejections()

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Lifespan runs the worker (the receiver can be the whole app); websockets are refused."""
        if scope["type"] == "lifespan":
            async with self.worker(), self._flushing():
                await serve_lifespan(receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
