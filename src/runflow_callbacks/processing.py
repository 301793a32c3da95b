"""The exactly-once engine: record, claim, run the handler, complete or fail.

:class:`CallbackProcessor` drives a :class:`~runflow_callbacks.stores.CallbackStore` for each
verified callback::

    store = open_store("sqlite:///./runflow-callbacks.db")
    processor = CallbackProcessor(store, handle_callback)     # mode="sync"
    outcome = await processor.handle(IncomingCallback.from_context(context))
    # answer outcome.http_status with outcome.body()

Two modes:

``sync`` (default)
    The handler runs while Runflow waits. The callback is recorded first, then claimed; the
    answer is 200 once the handler returned, 500 when it raised (the error is recorded and
    Runflow retries), 409 when another replica is running the same callback right now (so
    Runflow retries: nothing is acknowledged before the first run succeeds), and 200 for a
    duplicate of a processed callback (the handler is not run again).
``inbox``
    The answer is 200 as soon as the callback is durably recorded; :meth:`run_worker` (in any
    replica sharing the store) runs the handler, retries failures after :attr:`backoff`, and
    moves a callback to the dead letter (state ``dead``) after ``max_tries`` tries. Nothing
    verified is dropped: ``runflow-callbacks inbox retry`` (:meth:`retry`) brings it back.

Outcomes and their answers:

===============  =====  ==========================================================
``processed``    200    the handler ran and returned
``duplicate``    200    already processed: the handler did not run again
``recorded``     200    inbox mode: stored, the worker will run it
``dead``         200    in the dead letter (recorded; needs :meth:`retry`)
``in_progress``  409    another run holds the lease: Runflow retries later
``failed``       500    the handler raised (recorded with its error): Runflow retries
===============  =====  ==========================================================

A lease expires after ``lease`` (default 5 minutes), so a replica that crashed mid-handler does
not block its callback forever; while a handler runs, the processor renews its lease every
third of ``lease``, so a short lease (fast recovery) is safe for slow handlers too. A handler
still running after ``handler_timeout`` (default 15 minutes) is cancelled (async handlers) or
abandoned (sync handlers keep running in their thread) and counted as failed. When the
store is unreachable, :meth:`handle` raises :class:`~runflow_callbacks.errors.StoreError`
(answer 503: nothing was acknowledged). A handler that succeeded but whose completion could not
be stored will run again after its lease expires: make side effects idempotent where that
matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal, Union

import anyio.to_thread

from runflow_callbacks.asgi import utc_now
from runflow_callbacks.errors import ConfigurationError, InvalidPayloadError, RunflowCallbackError
from runflow_callbacks.models import parse_callback
from runflow_callbacks.stores import (
    IncomingCallback,
    KeyFunction,
    StoredCallback,
    aware,
    check_lease,
    check_limit,
    default_key,
    error_text,
)
from runflow_callbacks.stores._logic import as_failed, as_processed

if TYPE_CHECKING:
    from collections.abc import Mapping

    from runflow_callbacks.models import CallbackPayload
    from runflow_callbacks.stores import CallbackStore, Claim

__all__ = [
    "DEFAULT_HANDLER_TIMEOUT",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_TRIES",
    "CallbackProcessor",
    "ExponentialBackoff",
    "Mode",
    "OutcomeStatus",
    "ProcessingContext",
    "ProcessingHandler",
    "ProcessingOutcome",
]

logger = logging.getLogger("runflow_callbacks.processing")

Mode = Literal["sync", "inbox"]
OutcomeStatus = Literal["processed", "duplicate", "recorded", "dead", "in_progress", "failed"]

#: How long a claim holds a callback before another replica may take it over.
DEFAULT_LEASE: Final = timedelta(minutes=5)
#: Handler tries before a callback moves to the dead letter.
DEFAULT_MAX_TRIES: Final = 8
#: How long one handler run may take before it is cancelled and counted as failed.
DEFAULT_HANDLER_TIMEOUT: Final = timedelta(minutes=15)

_HTTP_STATUS: Final[dict[str, int]] = {
    "processed": 200,
    "duplicate": 200,
    "recorded": 200,
    "dead": 200,
    "in_progress": 409,
    "failed": 500,
}
_DETAIL: Final[dict[str, str]] = {
    "duplicate": "already processed; the handler did not run again",
    "recorded": "recorded; it will be processed in the background",
    "dead": "recorded in the dead letter after too many failed tries",
    "in_progress": "this callback is being processed right now; retry later",
    "failed": "the callback handler raised an error; Runflow will retry",
}


@dataclass(frozen=True, slots=True)
class ProcessingContext:
    """What a handler receives: the parsed payload and the stored record.

    ``attempt`` counts handler runs for this callback, this one included (1 on the first run).
    ``record.body`` holds the exact bytes that were verified; ``record.source`` says whether the
    callback was delivered or reconciled.
    """

    payload: CallbackPayload
    record: StoredCallback
    attempt: int

    @property
    def key(self) -> str:
        """The idempotency key."""
        return self.record.key

    @property
    def event(self) -> str | None:
        """The payload's ``event``."""
        return self.payload.event

    @property
    def subject_id(self) -> str | None:
        """The batch or run id."""
        return self.payload.subject_id

    @property
    def body(self) -> bytes:
        """The exact verified bytes."""
        return self.record.body


ProcessingHandler = Union[  # noqa: UP007 - a runtime alias must work on Python 3.10
    Callable[[ProcessingContext], Awaitable[object]], Callable[[ProcessingContext], object]
]
"""``handler(context)``, sync (run in a worker thread) or async; its return value is ignored."""


@dataclass(frozen=True, slots=True)
class ProcessingOutcome:
    """What became of one callback. ``http_status`` is the answer Runflow should get.

    ``record`` is the stored callback as last seen (None only when the store could not say);
    ``error`` is the exception a handler raised (logged, never sent to Runflow).
    """

    status: OutcomeStatus
    key: str
    record: StoredCallback | None = field(default=None, repr=False)
    error: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def http_status(self) -> int:
        """200, 409 or 500 (see the module docstring)."""
        return _HTTP_STATUS[self.status]

    @property
    def ok(self) -> bool:
        """True when Runflow is told the callback is safe (a 2xx answer)."""
        return self.http_status < 300

    @property
    def detail(self) -> str | None:
        """A short human-readable explanation (None for ``processed``)."""
        return _DETAIL.get(self.status)


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """Delay before retry number ``tries + 1``: ``base * factor ** (tries - 1)``, at most ``cap``.

    ``jitter`` (0 to 1) removes up to that fraction of each delay at random, so replicas that
    failed together do not retry together; ``random`` is injectable for tests.

    >>> backoff = ExponentialBackoff(base=timedelta(seconds=2), cap=timedelta(minutes=1))
    >>> [backoff(tries).total_seconds() for tries in (1, 2, 3, 10)]
    [2.0, 4.0, 8.0, 60.0]
    """

    base: timedelta = timedelta(seconds=2)
    factor: float = 2.0
    cap: timedelta = timedelta(minutes=10)
    jitter: float = 0.0
    random: Callable[[], float] = field(default=random.random, repr=False)

    def __post_init__(self) -> None:
        if self.base <= timedelta(0) or self.cap < self.base:
            raise ConfigurationError("backoff needs 0 < base <= cap")
        if self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ConfigurationError("backoff needs factor >= 1 and 0 <= jitter <= 1")

    def __call__(self, tries: int) -> timedelta:
        exponent = min(max(tries - 1, 0), 64)
        seconds = min(self.base.total_seconds() * self.factor**exponent, self.cap.total_seconds())
        if self.jitter:
            seconds *= 1 - self.jitter * self.random()
        return timedelta(seconds=seconds)


def _is_async(handler: object) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    return inspect.iscoroutinefunction(getattr(handler, "__call__", None))  # noqa: B004 - async __call__


class CallbackProcessor:
    """Runs a handler exactly once per idempotency key, on top of a store.

    Options (keyword-only): ``mode`` (``"sync"`` or ``"inbox"``), ``lease`` (how long a run
    holds its callback without renewing it), ``handler_timeout`` (None: no limit),
    ``max_tries`` (handler tries before the dead letter; None for never),
    ``backoff`` (tries → delay before the next inbox retry), ``clock`` (returns an aware
    datetime) and ``key`` (the idempotency key function, by default
    :func:`~runflow_callbacks.stores.default_key`).
    """

    def __init__(
        self,
        store: CallbackStore,
        handler: ProcessingHandler,
        *,
        mode: Mode = "sync",
        lease: timedelta = DEFAULT_LEASE,
        handler_timeout: timedelta | None = DEFAULT_HANDLER_TIMEOUT,
        max_tries: int | None = DEFAULT_MAX_TRIES,
        backoff: Callable[[int], timedelta] | None = None,
        clock: Callable[[], datetime] = utc_now,
        key: KeyFunction = default_key,
    ) -> None:
        if mode not in {"sync", "inbox"}:
            raise ConfigurationError(f"mode must be 'sync' or 'inbox', not {mode!r}")
        if not callable(handler):
            raise ConfigurationError(f"handler must be callable, not {handler!r}")
        if max_tries is not None:
            check_limit(max_tries, name="max_tries")
        self.store = store
        self.handler = handler
        self.mode: Mode = mode
        self.lease = check_lease(lease)
        if handler_timeout is not None and handler_timeout <= timedelta(0):
            raise ConfigurationError("handler_timeout must be a positive timedelta or None")
        self.handler_timeout = handler_timeout
        self.max_tries = max_tries
        self.backoff: Callable[[int], timedelta] = backoff or ExponentialBackoff()
        self.clock = clock
        self.key = key
        self._is_async = _is_async(handler)
        self._wakeup = asyncio.Event()

    def __repr__(self) -> str:
        return f"CallbackProcessor({self.store!r}, mode={self.mode!r}, lease={self.lease!r})"

    def _now(self) -> datetime:
        return aware(self.clock(), name="clock()")

    # --- entry points --------------------------------------------------------------------

    def incoming(
        self,
        payload: CallbackPayload,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        secret_id: str | None = None,
        secret_label: str | None = None,
        request_id: str | None = None,
        received_at: datetime | None = None,
        source: Literal["delivery", "reconcile"] = "delivery",
    ) -> IncomingCallback:
        """Describe a verified callback for :meth:`handle`, keyed with this processor's ``key``."""
        return IncomingCallback.from_payload(
            payload,
            body,
            received_at=received_at or self._now(),
            headers=headers,
            secret_id=secret_id,
            secret_label=secret_label,
            request_id=request_id,
            source=source,
            key=self.key,
        )

    async def handle(
        self, incoming: IncomingCallback, *, payload: CallbackPayload | None = None
    ) -> ProcessingOutcome:
        """Record one delivered callback and, in sync mode, run its handler once.

        ``payload`` saves parsing ``incoming.body`` again when the caller has it.
        """
        recorded = await self.store.record(incoming)
        record = recorded.record
        if self.mode == "inbox":
            if record.state in {"processed", "dead"}:
                return self._not_run(record)
            self._wakeup.set()
            return ProcessingOutcome("recorded", record.key, record)
        return await self._claim_and_run(record.key, payload)

    async def process_reconciled(
        self, incoming: IncomingCallback, *, payload: CallbackPayload | None = None
    ) -> ProcessingOutcome:
        """Reconciliation: record a payload read back from the delivery history, and run the
        handler now unless the callback was already processed (in either mode).

        Build ``incoming`` with ``source="reconcile"`` so it is not counted as a delivery.
        """
        await self.store.record(incoming)
        return await self._claim_and_run(incoming.key, payload)

    async def retry(self, key: str) -> ProcessingOutcome:
        """Re-run a failed, dead or pending callback now, with its tries reset to zero.

        A processed callback answers ``duplicate``; one under a live lease ``in_progress``.
        Raises :class:`~runflow_callbacks.stores.UnknownCallbackError` for an unknown key.
        """
        if not await self.store.reset_for_retry(key, now=self._now()):
            record = await self.store.get(key)
            assert record is not None
            return self._not_run(record)
        return await self._claim_and_run(key, None)

    async def run_due(self, *, limit: int = 16) -> list[ProcessingOutcome]:
        """Claim up to ``limit`` due callbacks and run their handlers (one inbox worker pass)."""
        claims = await self.store.claim_due(now=self._now(), lease=self.lease, limit=limit)
        if not claims:
            return []
        return list(await asyncio.gather(*(self._run(claim, None) for claim in claims)))

    async def run_worker(
        self,
        *,
        stop: asyncio.Event,
        poll_interval: timedelta = timedelta(seconds=1),
        batch_size: int = 16,
    ) -> None:
        """Run due callbacks until ``stop`` is set: the inbox worker.

        Polls every ``poll_interval`` (sooner when this processor records a callback), runs up
        to ``batch_size`` handlers at a time, and keeps going when the store is briefly
        unreachable (the error is logged). Several workers, in one or many replicas, may share
        a store: each callback is claimed by one of them.
        """
        check_limit(batch_size, name="batch_size")
        while not stop.is_set():
            self._wakeup.clear()
            try:
                outcomes = await self.run_due(limit=batch_size)
            except RunflowCallbackError as error:
                logger.warning("inbox worker: store unavailable (%s)", error)
                outcomes = []
            if len(outcomes) >= batch_size:
                continue  # more may be due right now
            await _wait_any(stop, self._wakeup, wait_seconds=poll_interval.total_seconds())

    # --- the run ---------------------------------------------------------------------------

    def _not_run(self, record: StoredCallback) -> ProcessingOutcome:
        status: OutcomeStatus
        if record.state == "processed":
            status = "duplicate"
        elif record.state == "dead":
            status = "dead"
        else:
            status = "in_progress"
        return ProcessingOutcome(status, record.key, record)

    async def _claim_and_run(self, key: str, payload: CallbackPayload | None) -> ProcessingOutcome:
        claim = await self.store.claim(key, now=self._now(), lease=self.lease)
        if not claim.acquired:
            return self._not_run(claim.record)
        return await self._run(claim, payload)

    async def _call_handler(self, context: ProcessingContext, token: str) -> None:
        timeout = None if self.handler_timeout is None else self.handler_timeout.total_seconds()
        heartbeat = asyncio.ensure_future(self._heartbeat(context.key, token))
        try:
            if self._is_async:
                result = self.handler(context)
                assert inspect.isawaitable(result)
                await asyncio.wait_for(_awaited(result), timeout)
            else:
                await asyncio.wait_for(anyio.to_thread.run_sync(self.handler, context), timeout)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, key: str, token: str) -> None:
        """Renew the lease every third of ``lease`` while the handler runs."""
        interval = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self.store.renew(key, token, now=self._now(), lease=self.lease)
            except RunflowCallbackError as error:
                logger.warning("callback %s: could not renew its lease (%s)", key, error)
                continue
            if not held:
                logger.warning("callback %s: its lease was taken over while the handler runs", key)
                return

    async def _run(self, claim: Claim, payload: CallbackPayload | None) -> ProcessingOutcome:
        record, token = claim.record, claim.token
        assert token is not None
        try:
            parsed = payload if payload is not None else parse_callback(record.body)
        except InvalidPayloadError as error:  # stored bytes that no longer parse: retry is futile
            return await self._failed(record, token, error, dead=True)
        try:
            await self._call_handler(ProcessingContext(parsed, record, record.attempts), token)
        except Exception as error:  # noqa: BLE001 - every handler error is recorded and retried
            return await self._failed(record, token, error)
        now = self._now()
        if await self.store.complete(record.key, token, now=now):
            final: StoredCallback | None = as_processed(record, now)
        else:
            logger.warning(
                "callback %s: the handler returned after its lease was taken over; "
                "it may have run twice",
                record.key,
            )
            final = await self.store.get(record.key)
        logger.info("callback %s processed (attempt %d)", record.key, record.attempts)
        return ProcessingOutcome("processed", record.key, final or record)

    async def _failed(
        self, record: StoredCallback, token: str, error: Exception, *, dead: bool = False
    ) -> ProcessingOutcome:
        now = self._now()
        tries = record.attempts
        dead = dead or (self.max_tries is not None and tries >= self.max_tries)
        retry_at = None if dead else now + self.backoff(tries)
        text = error_text(error)
        held = await self.store.fail(
            record.key, token, now=now, error=text, retry_at=retry_at, dead=dead
        )
        logger.warning(
            "callback %s: handler failed on attempt %d%s: %s",
            record.key,
            tries,
            " (moved to the dead letter)" if dead else "",
            text,
            exc_info=error,
        )
        final = (
            as_failed(record, now=now, error=text, retry_at=retry_at, dead=dead)
            if held
            else await self.store.get(record.key)
        )
        return ProcessingOutcome("failed", record.key, final or record, error)


async def _awaited(result: Awaitable[object]) -> object:
    return await result


async def _wait_any(*events: asyncio.Event, wait_seconds: float) -> None:
    """Wait until any event is set, or ``wait_seconds`` pass."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=wait_seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
