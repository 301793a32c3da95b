"""The exactly-once engine: record, claim, run the handler, complete or fail.

:class:`CallbackProcessor` drives a :class:`~runflow_callbacks.stores.CallbackStore` for each
verified callback. It knows nothing of HTTP: it takes a
:class:`~runflow_callbacks.context.CallbackContext` and returns an
:class:`~runflow_callbacks.answers.Outcome`, whose answer the front door looks up in
:mod:`runflow_callbacks.answers`::

    store = open_store("sqlite:///./runflow-callbacks.db")
    processor = CallbackProcessor(store, handle_callback)     # mode="sync"
    outcome = await processor.handle(context)                 # context: a verified callback

Two modes (``ReceiverOptions.mode``):

``sync`` (default)
    The handler runs while Runflow waits. One store call records the callback and claims it;
    one more completes it. ``processed`` once the handler returned, ``failed`` when it raised
    (the error is recorded and Runflow retries), ``in_progress`` when another replica runs the
    same callback right now (nothing is acknowledged before the first run succeeds), and
    ``duplicate`` for a callback already processed (the handler is not run again).
``inbox``
    ``recorded`` as soon as the callback is durably stored; :meth:`run_worker` (in any
    replica sharing the store) runs the handler, retries failures after ``backoff``, and moves
    a callback to the dead letter (state ``dead``) after ``max_tries`` tries. Nothing verified
    is dropped: ``runflow-callbacks inbox retry`` (:meth:`retry`) brings it back.

With a ``hand_off`` (see :mod:`runflow_callbacks.handoff`), :meth:`handle` records the
callback (as in ``inbox`` mode), queues a job for its key in your queue engine (Celery,
procrastinate), and answers ``recorded`` only once both succeeded (``queue_unavailable``, 503,
when the job could not be queued: Runflow retries). The engine's worker calls
:meth:`run_queued` with the key: the same claim, lease renewal and fencing as everywhere else,
so a job delivered twice runs the handler once.

A callback whose event no handler takes is answered ``unhandled``, as without a store, and is
kept in its own state ``unhandled`` (not ``processed``): a later delivery, :meth:`retry` or
reconciliation runs it once a handler for its event exists.

A lease expires after ``lease`` (default 5 minutes), so a replica that crashed mid-handler does
not block its callback forever; while a handler runs, the processor renews its lease every
third of ``lease``, so a short lease (fast recovery) is safe for slow handlers too. A handler
still running after ``handler_timeout`` (default 15 minutes) is cancelled (async handlers) or
abandoned (sync handlers keep running in their thread) and counted as failed. When the store
is unreachable, :meth:`handle` raises :class:`~runflow_callbacks.errors.StoreError` (answer
503: nothing was acknowledged). A handler that succeeded but whose completion could not be
stored will run again after its lease expires: make side effects idempotent where that
matters.

The engine logs one line per handler run it starts on its own (inbox worker, :meth:`retry`,
:meth:`process_reconciled`); for :meth:`handle` the front door that waits for the answer logs
it, so each callback has one line, with the traceback when its handler raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import warnings
from typing import TYPE_CHECKING, Any, Final

from runflow_callbacks._log import log_outcome
from runflow_callbacks._time import aware
from runflow_callbacks._timers import Deadline, Later
from runflow_callbacks.answers import Outcome, OutcomeStatus
from runflow_callbacks.context import CallbackContext
from runflow_callbacks.defaults import (
    DEFAULT_HANDLER_TIMEOUT,
    DEFAULT_LEASE,
    DEFAULT_MAX_TRIES,
)
from runflow_callbacks.errors import (
    ConfigurationError,
    HandOffError,
    InvalidPayloadError,
    RunflowCallbackError,
    StoreError,
)
from runflow_callbacks.handlers import Handler, HandlerTable
from runflow_callbacks.keys import KeyFunction, check_key, default_key
from runflow_callbacks.models import parse_callback
from runflow_callbacks.options import ExponentialBackoff, Mode, ReceiverOptions, resolve
from runflow_callbacks.stores import IncomingCallback

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from datetime import datetime, timedelta

    from typing_extensions import Unpack

    from runflow_callbacks.context import RunSource
    from runflow_callbacks.handlers import Registered
    from runflow_callbacks.handoff import HandOff
    from runflow_callbacks.models import AnyCallbackPayload
    from runflow_callbacks.options import ReceiverArgs
    from runflow_callbacks.stores import CallbackStore, State, StoredCallback

__all__ = [
    "DEFAULT_HANDLER_TIMEOUT",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_TRIES",
    "CallbackProcessor",
    "ExponentialBackoff",
    "KeyFunction",
    "Mode",
    "OutcomeStatus",
    "default_key",
]

logger = logging.getLogger("runflow_callbacks.processing")

_NOT_RUN: Final[dict[str, OutcomeStatus]] = {
    "processed": "duplicate",
    "dead": "dead",
    "unhandled": "unhandled",
}


def _incoming(context: CallbackContext, key: str) -> IncomingCallback:
    """The store's description of a verified callback (the one place it is built)."""
    return IncomingCallback(
        key=key,
        kind=context.payload.kind,
        subject_id=context.payload.subject_id,
        event=context.payload.event,
        body=context.body,
        headers=context.headers,
        secret_id=context.secret_id,
        secret_label=context.secret_label,
        request_id=context.request_id,
        received_at=context.received_at,  # the store checks it is timezone-aware
        source="reconcile" if context.source == "reconcile" else "delivery",
    )


def _context_of(record: StoredCallback, *, retry: bool = False) -> CallbackContext:
    """The handler's context for a callback read back from the store."""
    return CallbackContext(
        payload=parse_callback(record.body),
        body=record.body,
        secret_id=record.secret_id,
        secret_label=record.secret_label,
        request_id=record.request_id,
        headers=record.headers,
        received_at=record.received_at,
        signed=record.secret_label is not None,
        key=record.key,
        attempt=record.attempts,
        source="retry" if retry else ("reconcile" if record.source == "reconcile" else "http"),
    )


class CallbackProcessor:
    """Runs a handler exactly once per idempotency key, on top of a store.

    ``handlers`` is a :class:`~runflow_callbacks.handlers.HandlerTable`, one handler for every
    event, or None (record only: every callback a run finds is kept as ``unhandled``). Options
    are those of :class:`~runflow_callbacks.options.ReceiverOptions` (``mode``, ``lease``,
    ``handler_timeout``, ``max_tries``, ``backoff``, ``key``, ``clock``, ``poll_interval``,
    ``worker_batch_size``), as keyword arguments or ``options=``.

    With ``hand_off`` (a :class:`~runflow_callbacks.handoff.HandOff`), :meth:`handle` records
    each callback and queues a job for it in that queue engine, whose worker runs it with
    :meth:`run_queued`; the mode must then be ``sync`` (the queue replaces the inbox worker).
    """

    def __init__(
        self,
        store: CallbackStore,
        handlers: HandlerTable | Handler | None = None,
        *,
        options: ReceiverOptions | None = None,
        on_run: Callable[[CallbackContext, Outcome], None] | None = None,
        hand_off: HandOff | None = None,
        **changes: Unpack[ReceiverArgs],
    ) -> None:
        self.store = store
        #: The queue engine each recorded callback is handed to (None: run it here).
        self.hand_off = hand_off
        #: Called after each run no request waits for (worker, retry, reconcile): metrics.
        self.on_run = on_run
        if isinstance(handlers, HandlerTable):
            self.handlers = handlers
        else:
            self.handlers = HandlerTable(handlers)
        self.options = resolve(options, changes, who="CallbackProcessor")
        if hand_off is not None and self.options.mode == "inbox":
            raise ConfigurationError(
                "a hand_off runs callbacks in its queue's workers: it takes mode='sync', "
                "not an inbox worker as well"
            )
        self._wakeup = asyncio.Event()
        # Ends of runs the store failed to take (key -> the write), retried in the background.
        self._unsettled: dict[str, Callable[[], Awaitable[bool]]] = {}
        self._settling: set[asyncio.Future[None]] = set()

    def __repr__(self) -> str:
        return f"CallbackProcessor({self.store!r}, mode={self.mode!r}, lease={self.lease!r})"

    # The options, by name (read-only).
    @property
    def mode(self) -> Mode:
        return self.options.mode

    @property
    def lease(self) -> timedelta:
        return self.options.lease

    @property
    def handler_timeout(self) -> timedelta | None:
        return self.options.handler_timeout

    @property
    def max_tries(self) -> int | None:
        return self.options.max_tries

    @property
    def backoff(self) -> Callable[[int], timedelta]:
        return self.options.backoff

    @property
    def key(self) -> KeyFunction:
        return self.options.key

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.options.clock

    def _now(self) -> datetime:
        return aware(self.clock(), name="clock()")

    def key_of(self, context: CallbackContext) -> str:
        """The idempotency key of ``context`` under this processor's key function."""
        return check_key(self.options.key(context.payload, context.body))

    def incoming(
        self,
        payload: AnyCallbackPayload,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        secret_id: str | None = None,
        secret_label: str | None = None,
        request_id: str | None = None,
        received_at: datetime | None = None,
        signed: bool | None = None,
        source: RunSource = "http",
    ) -> CallbackContext:
        """Describe a callback you verified and parsed yourself, for :meth:`handle` (or, with
        ``source="reconcile"``, for :meth:`process_reconciled`)."""
        return CallbackContext(
            payload=payload,
            body=bytes(body),
            secret_id=secret_id,
            secret_label=secret_label,
            request_id=request_id,
            headers=dict(headers or {}),
            received_at=received_at or self._now(),
            signed=secret_label is not None if signed is None else signed,
            source=source,
        )

    # --- entry points --------------------------------------------------------------------

    async def handle(self, context: CallbackContext) -> Outcome:
        """Record one delivered callback and, in sync mode, run its handler once."""
        options = self.options
        key_function = options.key
        key = key_function(context.payload, context.body)
        if key_function is not default_key:  # default_key's keys are valid and bounded
            key = check_key(key)
        if self.hand_off is not None:
            return await self._hand_off(self.hand_off, context, key)
        if options.mode == "inbox":
            outcome = await self._record(context, key)
            if outcome.status == "recorded":
                self._wakeup.set()
            return outcome
        return await self._admit_and_run(context, key)

    async def record(self, context: CallbackContext) -> Outcome:
        """Only record ``context`` (for a worker to run): ``recorded``, ``duplicate``, ``dead``."""
        return await self._record(context, self.key_of(context))

    async def _record(self, context: CallbackContext, key: str) -> Outcome:
        admission = await self.store.record_and_claim(
            _incoming(context, key), now=self.options.clock(), lease=None
        )
        return Outcome(_NOT_RUN.get(admission.state, "recorded"), key)

    async def _hand_off(self, hand_off: HandOff, context: CallbackContext, key: str) -> Outcome:
        try:
            admission = await hand_off.admit(
                self.store, _incoming(context, key), now=self.options.clock()
            )
        except HandOffError as error:
            logger.warning(
                "callback %r: not queued (%s); answered 503 so that Runflow delivers it again",
                key,
                error,
            )
            return Outcome("queue_unavailable", key)
        return Outcome(_NOT_RUN.get(admission.state, "recorded"), key)

    async def run_queued(self, key: str) -> Outcome:
        """Run the job a queue engine got for ``key`` (see :mod:`runflow_callbacks.handoff`).

        Claims the callback for ``lease`` and runs its handler as :meth:`retry` does, without
        resetting its tries: ``processed``, ``failed`` (kept with its next due time, or moved
        to the dead letter after ``max_tries``), ``unhandled``; or, without running it,
        ``duplicate`` (processed already: a job delivered twice), ``dead``, or ``in_progress``
        (another worker holds a live lease: try again once it expires). ``store_unavailable``
        when the handler ran but its completion is still being stored. Raises
        :class:`~runflow_callbacks.errors.StoreError` when the store is unreachable and
        :class:`~runflow_callbacks.errors.UnknownCallbackError` for a key never recorded.
        """
        claim = await self.store.claim(key, now=self._now(), lease=self.lease)
        if claim.token is None:
            return self._not_run(key, claim.record.state)
        return await self._run_stored(claim.record, claim.token)

    async def process_reconciled(self, context: CallbackContext) -> Outcome:
        """Reconciliation: record a payload read back from the delivery history and run the
        handler now unless the callback was already processed (in either mode).

        ``context.source`` must be ``"reconcile"``, so it is not counted as a delivery.
        """
        if context.source != "reconcile":
            raise ConfigurationError("process_reconciled() takes a context with source='reconcile'")
        outcome = await self._admit_and_run(context, self.key_of(context))
        if outcome.attempt is not None:
            self._log(context, outcome)
        return outcome

    async def retry(self, key: str, *, force: bool = False) -> Outcome:
        """Re-run a failed, dead, unhandled or pending callback now, with its tries reset.

        A processed callback answers ``duplicate`` unless ``force`` (then it runs again,
        recorded as one more attempt); one under a live lease ``in_progress``; a pruned one
        (its body is gone) ``duplicate`` or ``dead`` as it stands. Raises
        :class:`~runflow_callbacks.errors.UnknownCallbackError` for an unknown key.
        """
        if not await self.store.reset_for_retry(key, now=self._now(), force=force):
            record = await self.store.get(key)
            return self._not_run(key, None if record is None else record.state)
        claim = await self.store.claim(key, now=self._now(), lease=self.lease)
        if claim.token is None:
            return self._not_run(key, claim.record.state)
        return await self._run_stored(claim.record, claim.token, retry=True)

    async def run_due(self, *, limit: int | None = None) -> list[Outcome]:
        """Claim up to ``limit`` due callbacks and run their handlers (one inbox worker pass)."""
        claims = await self.store.claim_due(
            now=self._now(), lease=self.lease, limit=limit or self.options.worker_batch_size
        )
        if not claims:
            return []
        runs = [self._run_stored(claim.record, claim.token) for claim in claims if claim.token]
        return list(await asyncio.gather(*runs))

    async def run_worker(
        self,
        *,
        stop: asyncio.Event,
        poll_interval: timedelta | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Run due callbacks until ``stop`` is set: the inbox worker.

        Polls every ``poll_interval`` (sooner when this processor records a callback), runs up
        to ``batch_size`` handlers at a time (both default to the options), and keeps going
        when the store is briefly unreachable (the error is logged). Several workers, in one or
        many replicas, may share a store: each callback is claimed by one of them.
        """
        await work_until(
            stop,
            self._wakeup,
            self.run_due,
            interval=(poll_interval or self.options.poll_interval).total_seconds(),
            size=batch_size or self.options.worker_batch_size,
        )

    # --- the run ---------------------------------------------------------------------------

    def _not_run(self, key: str, state: State | None) -> Outcome:
        return Outcome(_NOT_RUN.get(state or "", "in_progress"), key)

    async def _admit_and_run(self, context: CallbackContext, key: str) -> Outcome:
        admission = await self.store.record_and_claim(
            _incoming(context, key), now=self.options.clock(), lease=self.options.lease
        )
        if admission.token is None:
            unsettled = self._unsettled.get(key)
            if unsettled is not None:
                # This processor ran it, and the store answers again: store how that run
                # ended now, rather than answering in_progress until the lease expires.
                await unsettled()
                if self._unsettled.get(key) is unsettled:
                    del self._unsettled[key]
                record = await self.store.get(key)
                return self._not_run(key, None if record is None else record.state)
            return self._not_run(key, admission.state)
        context = dataclasses.replace(context, key=key, attempt=admission.attempts)
        return await self._run(context, admission.token)

    async def _run_stored(
        self, record: StoredCallback, token: str, *, retry: bool = False
    ) -> Outcome:
        try:
            context = _context_of(record, retry=retry)
        except InvalidPayloadError as error:  # stored bytes that no longer parse: retry is futile
            return await self._failed(record.key, record.attempts, token, error, dead=True)
        outcome = await self._run(context, token)
        self._log(context, outcome)
        return outcome

    async def _run(self, context: CallbackContext, token: str) -> Outcome:
        key, attempt = context.key, context.attempt
        assert key is not None
        assert attempt is not None
        entry = self.handlers.lookup(context.payload.event, context.payload.kind)
        if entry is None:
            await self._settle(
                key, "release", lambda: self.store.release(key, token, now=self._now())
            )
            return Outcome("unhandled", key)
        try:
            await self._call_handler(entry, context, key, token)
        except Exception as error:  # noqa: BLE001 - every handler error is recorded and retried
            return await self._failed(key, attempt, token, error)
        done = await self._settle(
            key, "completion", lambda: self.store.complete(key, token, now=self._now())
        )
        if done is None:  # the handler ran; its completion is being stored in the background
            return Outcome("store_unavailable", key, attempt)
        if not done:
            logger.warning(
                "callback %r: the handler returned after its lease was taken over; "
                "it may have run twice",
                key,
            )
        return Outcome("processed", key, attempt)

    async def _settle(
        self, key: str, what: str, write: Callable[[], Awaitable[bool]]
    ) -> bool | None:
        """Store how a run ended (``write``: complete, fail or release, fenced by the run's
        token); its answer, or None when the store failed and the write goes on in the
        background.

        A handler that ran while the store went away must not run again: its record stays
        ``processing`` under the lease, so the write is retried with backoff until the lease
        would expire, and a redelivery reaching this processor meanwhile completes it at once
        (see :meth:`_admit_and_run`) rather than waiting for the lease.
        """
        try:
            return await write()
        except StoreError as error:
            logger.warning(
                "callback %r: the handler's %s could not be stored (%s); "
                "retrying until its lease expires",
                key,
                what,
                error,
            )
        self._unsettled[key] = write
        task = asyncio.ensure_future(self._settle_later(key, what, write))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return None

    async def _settle_later(
        self, key: str, what: str, write: Callable[[], Awaitable[bool]]
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lease.total_seconds() * 0.9
        delay = 0.05
        try:
            while loop.time() + delay < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                if self._unsettled.get(key) is not write:
                    return  # a redelivery stored it meanwhile
                try:
                    await write()
                except StoreError:
                    continue
                logger.info("callback %r: the handler's %s is stored after all", key, what)
                return
            logger.warning(
                "callback %r: the handler's %s could not be stored before its lease "
                "expired; it may run again",
                key,
                what,
            )
        finally:
            if self._unsettled.get(key) is write:
                del self._unsettled[key]

    async def _call_handler(
        self, entry: Registered, context: CallbackContext, key: str, token: str
    ) -> None:
        options = self.options
        timeout = options.handler_timeout
        interval = options.lease.total_seconds() / 3
        # The heartbeat starts only once a third of the lease has passed: most handlers are
        # done long before, and then no task is ever made for it. Both timers are entries in
        # the loop's shared sweeper (a dict insert and pop), and the handler runs in this task:
        # no task and no timer handle per run, where wait_for would make both.
        heartbeat: list[asyncio.Future[None]] = []
        started = Later(
            interval,
            lambda: heartbeat.append(asyncio.ensure_future(self._heartbeat(key, token, interval))),
        )
        deadline = None if timeout is None else Deadline(timeout.total_seconds())
        try:
            await self.handlers.call(entry, context)
        except asyncio.CancelledError:
            if deadline is None or not deadline.expired:
                raise
            deadline.taken_back()
            raise TimeoutError(
                f"the handler ran longer than handler_timeout ({deadline.seconds:g} s)"
            ) from None
        finally:
            if deadline is not None:
                deadline.cancel()
            started.cancel()
            for task in heartbeat:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _heartbeat(self, key: str, token: str, interval: float) -> None:
        """Renew the lease now, then every third of ``lease``, while the handler runs."""
        while True:
            try:
                held = await self.store.renew(key, token, now=self._now(), lease=self.lease)
            except RunflowCallbackError as error:
                logger.warning("callback %r: could not renew its lease (%s)", key, error)
                continue
            if not held:
                logger.warning("callback %r: its lease was taken over while the handler runs", key)
                return
            await asyncio.sleep(interval)

    async def _failed(
        self, key: str, attempt: int, token: str, error: Exception, *, dead: bool = False
    ) -> Outcome:
        now = self._now()
        dead = dead or (self.max_tries is not None and attempt >= self.max_tries)
        retry_at = None if dead else now + self.backoff(attempt)
        text = _error_text(error)
        await self._settle(
            key,
            "failure",
            lambda: self.store.fail(key, token, now=now, error=text, retry_at=retry_at, dead=dead),
        )
        return Outcome("failed", key, attempt, error)

    def _log(self, context: CallbackContext, outcome: Outcome) -> None:
        log_outcome(logger, context, outcome.status, None, error=outcome.error)
        if self.on_run is not None:
            self.on_run(context, outcome)


def _error_text(error: BaseException, *, max_chars: int = 2000) -> str:
    """How a handler error is kept: its type and message, bounded in size."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


async def work_until(
    stop: asyncio.Event,
    wakeup: asyncio.Event,
    run_due: Callable[..., Awaitable[list[Outcome]]],
    *,
    interval: float,
    size: int,
) -> None:
    """The inbox worker's loop: ``run_due(limit=size)`` until ``stop`` is set, again at once
    while a pass finds a full batch, else after ``interval`` seconds or a ``wakeup``; a store
    briefly unreachable is logged and tried again."""
    while not stop.is_set():
        wakeup.clear()
        try:
            outcomes = await run_due(limit=size)
        except RunflowCallbackError as error:
            logger.warning("inbox worker: store unavailable (%s)", error)
            outcomes = []
        if len(outcomes) >= size:
            continue  # more may be due right now
        await _wait_any(stop, wakeup, wait_seconds=interval)


async def _wait_any(*events: asyncio.Event, wait_seconds: float) -> None:
    """Wait until any event is set, or ``wait_seconds`` pass."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=wait_seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


_DEPRECATED: Final[dict[str, tuple[str, str]]] = {
    "ProcessingContext": ("runflow_callbacks.context", "CallbackContext"),
    "ProcessingHandler": ("runflow_callbacks.handlers", "Handler"),
    "ProcessingOutcome": ("runflow_callbacks.answers", "Outcome"),
}


def __getattr__(name: str) -> Any:
    """The 0.1 names of the engine's own vocabulary, now one with the receiver's."""
    if name in _DEPRECATED:
        module, new = _DEPRECATED[name]
        warnings.warn(
            f"runflow_callbacks.processing.{name} is deprecated: every handler now takes the "
            f"one {module}.{new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(__import__(module, fromlist=[new]), new)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
