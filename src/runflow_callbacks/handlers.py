"""Handlers: one signature everywhere, and the table that picks one per event.

A handler takes one argument, the :class:`~runflow_callbacks.context.CallbackContext`, and may
be a plain function (run in a worker thread, so it never blocks the event loop) or a coroutine
function (awaited); its return value is ignored. The same handler serves a
:class:`~runflow_callbacks.receiver.CallbackReceiver`, ``runflow-callbacks serve --handler``,
a :class:`~runflow_callbacks.processing.CallbackProcessor`, ``inbox retry`` and ``reconcile``.

:class:`HandlerTable` holds one handler per event name, an optional ``on_batch`` and ``on_run``
fallback for every batch or run callback without a handler of its own event, and an optional
``on_any`` fallback for every callback left. Whether a handler is a coroutine function is
decided once, when it is registered.

The types follow the events: a handler of ``batch.*`` events only may take a
``CallbackContext[BatchCallbackPayload]``, one of ``run.*`` events a
``CallbackContext[RunCallbackPayload]``, and a handler of any other mix (or of ``on_any``) a
bare ``CallbackContext`` (any payload). A handler that takes a bare ``CallbackContext`` serves
every event. An event name this version does not know is a
:class:`~runflow_callbacks.errors.ConfigurationError` (a typo would never run), unless it is
registered with ``allow_unknown=True``.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, TypeVar, Union, overload

from runflow_callbacks._events import BATCH_EVENTS, EVENTS, RUN_EVENTS
from runflow_callbacks.answers import Outcome
from runflow_callbacks.context import CallbackContext, PayloadT_co
from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    from runflow_callbacks.models import (
        BatchCallbackPayload,
        BatchEvent,
        KnownEvent,
        PayloadKind,
        RunCallbackPayload,
        RunEvent,
    )
    from runflow_callbacks.tracing import CallbackTracing

__all__ = ["BatchH", "H", "Handler", "HandlerTable", "Registered", "RunH"]

Handler = Union[  # noqa: UP007 - a runtime alias must work on Python 3.10
    Callable[[CallbackContext[PayloadT_co]], Awaitable[object]],
    Callable[[CallbackContext[PayloadT_co]], object],
]
"""A callback handler: ``handler(context)``, sync or async; its return value is ignored.

``Handler[BatchCallbackPayload]`` takes a ``CallbackContext[BatchCallbackPayload]``; a bare
``Handler`` takes a context of any payload."""

#: A handler of any payload, returned as it came by the decorators (``on_any``, ``on``).
H = TypeVar("H", bound=Handler)
#: A handler of batch callbacks (``on_batch``, ``on("batch.succeeded")``).
BatchH = TypeVar("BatchH", bound="Handler[BatchCallbackPayload]")
#: A handler of run callbacks (``on_run``, ``on("run.completed")``).
RunH = TypeVar("RunH", bound="Handler[RunCallbackPayload]")

_KNOWN_EVENTS: Final = frozenset(EVENTS)
_KIND_OF_EVENT: Final[dict[str, PayloadKind]] = {
    **dict.fromkeys(BATCH_EVENTS, "batch"),
    **dict.fromkeys(RUN_EVENTS, "run"),
}


def _is_async(handler: object) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - an object with an async __call__
    return inspect.iscoroutinefunction(call)


def _check_event(name: object, *, allow_unknown: bool) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"an event name must be a non-empty str, not {name!r}")
    if allow_unknown or name in _KNOWN_EVENTS:
        return
    close = difflib.get_close_matches(name, EVENTS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"the known events are {', '.join(EVENTS)}"
    raise ConfigurationError(
        f"unknown event {name!r}: {hint} (register it with allow_unknown=True if Runflow "
        "really sends it)"
    )


class Registered:
    """A registered handler and how to call it (decided once, at registration)."""

    __slots__ = ("handler", "is_async")

    def __init__(self, handler: Handler[Any]) -> None:
        if not callable(handler):
            raise ConfigurationError(
                f"a handler must be a function taking the CallbackContext, not {handler!r}"
            )
        self.handler = handler
        self.is_async = _is_async(handler)

    async def __call__(self, context: CallbackContext) -> None:
        if self.is_async:
            await self.handler(context)  # type: ignore[misc] # checked by _is_async at registration
        else:
            await asyncio.to_thread(self.handler, context)


class HandlerTable:
    """One handler per event name, plus ``on_batch``, ``on_run`` and ``on_any`` fallbacks.

    :meth:`lookup` tries, in order: the handler of the callback's event, the ``on_batch`` or
    ``on_run`` handler of its payload's kind, the ``on_any`` handler.
    """

    __slots__ = ("_by_event", "_by_kind", "_fallback", "timer", "tracing")

    def __init__(self, fallback: Handler | None = None) -> None:
        self._by_event: dict[str, Registered] = {}
        self._by_kind: dict[str, Registered] = {}
        self._fallback: Registered | None = None if fallback is None else Registered(fallback)
        #: Called with the seconds each handler run took (metrics), when set.
        self.timer: Callable[[float], None] | None = None
        #: Where each run's span goes (:mod:`runflow_callbacks.tracing`), when set.
        self.tracing: CallbackTracing | None = None

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

        Batch events only: the handler may take a ``CallbackContext[BatchCallbackPayload]``;
        run events only: a ``CallbackContext[RunCallbackPayload]``; otherwise a bare
        ``CallbackContext``. An event this version does not know raises
        :class:`~runflow_callbacks.errors.ConfigurationError` naming the closest known one,
        unless ``allow_unknown=True`` (its callbacks arrive as a ``GenericCallbackPayload``).
        """
        names = (event, *events)
        for name in names:
            _check_event(name, allow_unknown=allow_unknown)
            self._check_free(name)

        def register(handler: Handler[Any]) -> Handler[Any]:
            entry = Registered(handler)
            for name in names:
                self._check_free(name)
            for name in names:
                self._by_event[name] = entry
            return handler

        return register

    def _check_free(self, name: str) -> None:
        if name in self._by_event:
            raise ConfigurationError(f"a handler for {name!r} is already registered")

    def on_batch(self, handler: BatchH) -> BatchH:
        """Register the decorated function for every batch callback (a
        ``BatchCallbackPayload``, the older shape without ``event`` included) whose event has
        no handler of its own. An event this version does not know is not a batch payload
        (it parses into a ``GenericCallbackPayload``) and goes to ``on_any``."""
        self._on_kind("batch", handler)
        return handler

    def on_run(self, handler: RunH) -> RunH:
        """Register the decorated function for every run callback (a ``RunCallbackPayload``)
        whose event has no handler of its own; see :meth:`on_batch`."""
        self._on_kind("run", handler)
        return handler

    def _on_kind(self, kind: PayloadKind, handler: Handler[Any]) -> None:
        if kind in self._by_kind:
            raise ConfigurationError(f"an on_{kind} handler is already registered")
        self._by_kind[kind] = Registered(handler)

    def on_any(self, handler: H) -> H:
        """Register the decorated function for every callback no other handler takes."""
        if self._fallback is not None:
            raise ConfigurationError("an on_any handler is already registered")
        self._fallback = Registered(handler)
        return handler

    def lookup(self, event: str | None, kind: PayloadKind | None = None) -> Registered | None:
        """How to run the handler of a callback (None when no handler takes it).

        ``kind`` is the payload's :attr:`~runflow_callbacks.models.CallbackPayload.kind`;
        without it, the kind of a known event's name is assumed, and a callback without
        ``event`` reaches no ``on_batch``/``on_run`` handler. Pass it.
        """
        if event is not None:
            entry = self._by_event.get(event)
            if entry is not None:
                return entry
        if self._by_kind:
            if kind is None and event is not None:
                kind = _KIND_OF_EVENT.get(event)
            entry = None if kind is None else self._by_kind.get(kind)
            if entry is not None:
                return entry
        return self._fallback

    def handler_for(
        self, event: str | None, kind: PayloadKind | None = None
    ) -> Handler[Any] | None:
        """The handler that would run for a callback (None when it is unhandled); the
        arguments are those of :meth:`lookup`."""
        entry = self.lookup(event, kind)
        return None if entry is None else entry.handler

    @property
    def events(self) -> Iterable[str]:
        """The events that have a handler of their own."""
        return tuple(self._by_event)

    @property
    def empty(self) -> bool:
        """True when no handler at all is registered (a record-only receiver)."""
        return not self._by_event and not self._by_kind and self._fallback is None

    async def call(self, entry: Registered, context: CallbackContext) -> None:
        """Run ``entry`` on ``context``, timed by :attr:`timer` when there is one."""
        timer, tracing = self.timer, self.tracing
        if timer is None and tracing is None:
            await entry(context)
            return
        started = time.perf_counter()
        try:
            if tracing is None:
                await entry(context)
            else:
                with tracing.span(
                    "handler", event=context.event, key=context.key, attempt=context.attempt
                ):
                    await entry(context)
        finally:
            if timer is not None:
                timer(time.perf_counter() - started)

    async def run(self, context: CallbackContext) -> Outcome:
        """Run the handler of ``context`` with no store: ``processed``, ``unhandled``, or
        ``failed`` with the exception in :attr:`Outcome.error` (never raised)."""
        payload = context.payload
        entry = self.lookup(payload.event, payload.kind)
        if entry is None:
            return _UNHANDLED
        try:
            await self.call(entry, context)
        except Exception as error:  # noqa: BLE001 - any handler error becomes a 500 and a retry
            return Outcome("failed", error=error)
        return _PROCESSED


_PROCESSED = Outcome("processed")
_UNHANDLED = Outcome("unhandled")
