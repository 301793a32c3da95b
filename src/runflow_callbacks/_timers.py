"""Cheap timers for the per-request and per-run deadlines: one timer handle per event loop.

``asyncio.wait_for`` and ``asyncio.timeout`` cost a task or a timer handle per use; a body
deadline or a handler timeout is armed and disarmed on every callback and almost never fires.
Here each event loop has one :class:`Sweeper`: arming a timer is a dict insert, disarming it a
dict pop, and the loop's single timer handle is set for the earliest armed timer, again only
when it fires (about once per timeout while callbacks keep coming) or when a timer due earlier
than it is armed. A timer fires at its time or a little later, never before.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Deadline", "Later", "Sweeper"]


class _Timer:
    __slots__ = ("at", "sweeper")

    def __init__(self, seconds: float) -> None:
        self.sweeper = Sweeper.of(asyncio.get_running_loop())
        self.at = self.sweeper.arm(self, seconds)

    def fire(self) -> None:  # pragma: no cover - every timer overrides it
        raise NotImplementedError

    def cancel(self) -> None:
        """Disarm (idempotent)."""
        self.sweeper.pending.pop(self, None)


class Deadline(_Timer):
    """Cancels the current task once ``seconds`` have passed, unless disarmed first.

    The code that awaited catches the ``CancelledError``, checks :attr:`expired` (the
    cancellation was ours, not the caller's) and calls :meth:`taken_back` before raising its
    own timeout error.
    """

    __slots__ = ("expired", "seconds", "task")

    def __init__(self, seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.seconds = seconds
        self.expired = False
        super().__init__(seconds)

    def fire(self) -> None:
        self.expired = True
        self.task.cancel()

    def taken_back(self) -> None:
        """Undo the cancellation this deadline made (the task goes on, not cancelled)."""
        if sys.version_info >= (3, 11):
            self.task.uncancel()


class Later(_Timer):
    """Calls ``action`` once ``seconds`` have passed, unless disarmed first."""

    __slots__ = ("action",)

    def __init__(self, seconds: float, action: Callable[[], None]) -> None:
        self.action = action
        super().__init__(seconds)

    def fire(self) -> None:
        self.action()


class Sweeper:
    """The armed timers of one event loop, and one timer handle for the earliest of them."""

    __slots__ = ("__weakref__", "_at", "_handle", "loop", "pending")

    _current: Sweeper | None = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: dict[_Timer, None] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Sweeper:
        """The sweeper of ``loop`` (the last one used is kept: one loop per process, usually)."""
        current = cls._current
        if current is None or current.loop is not loop:
            current = _SWEEPERS.get(loop)
            if current is None:
                current = _SWEEPERS[loop] = cls(loop)
            cls._current = current
        return current

    def arm(self, timer: _Timer, seconds: float) -> float:
        """Arm ``timer`` for ``seconds`` from now; return the loop time it is due at."""
        at = self.loop.time() + seconds
        self.pending[timer] = None
        if self._handle is None or at < self._at:
            self._schedule(at)
        return at

    def _schedule(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = at
        self._handle = self.loop.call_at(at, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        now = self.loop.time()
        due = [timer for timer in self.pending if timer.at <= now]
        for timer in due:
            del self.pending[timer]
        for timer in due:
            timer.fire()
        if self.pending:
            self._schedule(min(timer.at for timer in self.pending))


_SWEEPERS: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Sweeper]] = (
    weakref.WeakKeyDictionary()
)
