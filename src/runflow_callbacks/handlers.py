"""Handlers: one signature everywhere, and the table that picks one per event.

A handler takes one argument, the :class:`~runflow_callbacks.context.CallbackContext`, and may
be a plain function (run in a worker thread, so it never blocks the event loop) or a coroutine
function (awaited); its return value is ignored. The same handler serves a
:class:`~runflow_callbacks.receiver.CallbackReceiver`, ``runflow-callbacks serve --handler``,
a :class:`~runflow_callbacks.processing.CallbackProcessor`, ``inbox retry`` and ``reconcile``.

:class:`HandlerTable` holds one handler per event name and an optional ``on_any`` fallback for
every event without one of its own. Whether a handler is a coroutine function is decided once,
when it is registered.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, TypeVar, Union

from runflow_callbacks.answers import Outcome
from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.tracing import CallbackTracing

__all__ = ["Handler", "HandlerTable", "Registered"]

Handler = Union[  # noqa: UP007 - a runtime alias must work on Python 3.10
    Callable[["CallbackContext"], Awaitable[object]], Callable[["CallbackContext"], object]
]
"""A callback handler: ``handler(context)``, sync or async; its return value is ignored."""

H = TypeVar("H", bound=Handler)


def _is_async(handler: object) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - an object with an async __call__
    return inspect.iscoroutinefunction(call)


def _check_event(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"an event name must be a non-empty str, not {name!r}")


class Registered:
    """A registered handler and how to call it (decided once, at registration)."""

    __slots__ = ("handler", "is_async")

    def __init__(self, handler: Handler) -> None:
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
    """One handler per event name, plus an ``on_any`` fallback."""

    __slots__ = ("_by_event", "_fallback", "timer", "tracing")

    def __init__(self, fallback: Handler | None = None) -> None:
        self._by_event: dict[str, Registered] = {}
        self._fallback: Registered | None = None if fallback is None else Registered(fallback)
        #: Called with the seconds each handler run took (metrics), when set.
        self.timer: Callable[[float], None] | None = None
        #: Where each run's span goes (:mod:`runflow_callbacks.tracing`), when set.
        self.tracing: CallbackTracing | None = None

    def on(self, event: str, *events: str) -> Callable[[H], H]:
        """Register the decorated function as the handler of one or more events."""
        names = (event, *events)
        for name in names:
            _check_event(name)
            self._check_free(name)

        def register(handler: H) -> H:
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

    def on_any(self, handler: H) -> H:
        """Register the decorated function for every event that has no handler of its own."""
        if self._fallback is not None:
            raise ConfigurationError("an on_any handler is already registered")
        self._fallback = Registered(handler)
        return handler

    def lookup(self, event: str | None) -> Registered | None:
        """How to run the handler of ``event`` (None when no handler takes it)."""
        entry = self._by_event.get(event) if event is not None else None
        return self._fallback if entry is None else entry

    def handler_for(self, event: str | None) -> Handler | None:
        """The handler that would run for ``event`` (None when the callback is unhandled)."""
        entry = self.lookup(event)
        return None if entry is None else entry.handler

    @property
    def events(self) -> Iterable[str]:
        """The events that have a handler of their own."""
        return tuple(self._by_event)

    @property
    def empty(self) -> bool:
        """True when no handler at all is registered (a record-only receiver)."""
        return not self._by_event and self._fallback is None

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
        """Run the handler of ``context.event`` with no store: ``processed``, ``unhandled``,
        or ``failed`` with the exception in :attr:`Outcome.error` (never raised)."""
        entry = self.lookup(context.payload.event)
        if entry is None:
            return _UNHANDLED
        try:
            await self.call(entry, context)
        except Exception as error:  # noqa: BLE001 - any handler error becomes a 500 and a retry
            return Outcome("failed", error=error)
        return _PROCESSED


_PROCESSED = Outcome("processed")
_UNHANDLED = Outcome("unhandled")
