"""Gathering concurrent writes into batches: the PostgreSQL and Redis stores' group commit.

On a busy receiver many callbacks are in flight at once, and each of them costs its store one
``record_and_claim`` and one ``complete``: two round trips to the server, two commits (or two
script calls), two wake-ups of the event loop. A :class:`Batcher` lets the operations that are
in flight together share those. :meth:`Batcher.call` queues an operation and waits for its
answer. A sender takes what is queued (up to ``max_batch``) and hands it to the backend's
``run``, which sends it in one go and settles every operation's future.

The first operation to find nothing in flight is the sender itself: it lets the event loop run
once, so that the other operations started in the same iteration (the tasks a burst of
requests woke, or the callbacks one batch answered) queue up behind it. Still alone, it sends
itself in its caller's task, so a lone call costs one loop iteration more than before batching
and nothing else; with company, it hands the queue to a sender task. While a batch is in
flight, new operations queue up: a further sender starts for them at once while fewer than
``max_in_flight`` batches are in flight, and beyond that they wait and leave together once a
sender is free.

The backends keep the rules that matter (see their ``_run_batch``):

- every operation still answers, and changes, exactly what it did on its own;
- one failing operation fails only itself;
- no future is resolved before the server acknowledged the batch (committed it, or answered
  every script in it), and a batch that may have run is never sent again.

An operation whose caller was cancelled while it waited in the queue is not sent. Once sent,
its answer is dropped (its effect, like that of a cancelled statement before, may or may not
have happened); one caller's cancellation never reaches another's operation. :meth:`drain`
waits until everything sent or queued has been answered.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

__all__ = ["Batcher", "Pending"]

OpT = TypeVar("OpT")


@dataclass(slots=True)
class Pending(Generic[OpT]):
    """One queued operation and the future its caller awaits."""

    op: OpT
    future: asyncio.Future[Any]

    @property
    def settled(self) -> bool:
        """Answered, failed, or abandoned by its caller (cancelled)."""
        return self.future.done()

    def resolve(self, value: object) -> None:
        if not self.future.done():
            self.future.set_result(value)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Batcher(Generic[OpT]):
    """Queues operations of one store and sends them in batches (see the module docstring).

    ``run`` sends one batch (a non-empty list, in the order the operations were queued) and
    settles each operation's future; anything it raises fails the operations it left
    unsettled (an operation sent alone gets it raised). ``acquire``, when given, is entered
    before a batch is taken from the queue and left after ``run`` returned (PostgreSQL: a
    connection slot), so that operations queued while every connection is busy leave together
    on the next free one.
    """

    def __init__(
        self,
        run: Callable[[list[Pending[OpT]]], Awaitable[None]],
        *,
        max_batch: int,
        max_in_flight: int,
        acquire: Callable[[], AbstractAsyncContextManager[object]] | None = None,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._run = run
        self._acquire = acquire or contextlib.nullcontext
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._queue: list[Pending[OpT]] = []
        self._senders = 0  # sender tasks alive
        self._waiting = 0  # of which, not yet holding a batch: they take the queue next
        self._tasks: set[asyncio.Task[None]] = set()
        self._leading: set[asyncio.Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def call(self, op: OpT) -> Any:
        """Send ``op`` in the next batch and wait for its answer (or its error)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a store used by a new event loop: the old one's tasks died
            self._loop, self._queue, self._senders, self._waiting = loop, [], 0, 0
            self._tasks, self._leading = set(), set()
        pending: Pending[OpT] = Pending(op, loop.create_future())
        self._queue.append(pending)
        if self._senders == 0:
            return await self._lead(pending)
        self._spawn()
        return await pending.future

    async def _lead(self, pending: Pending[OpT]) -> Any:
        """Nothing is in flight: this call's own task is the sender due to take the queue.

        It lets the event loop run once, so that the other calls of this iteration queue up
        behind it. Alone still, it sends its operation itself, a batch of one (no sender task
        and no hand-off of the answer, so a lone call costs that one iteration more than it
        did before batching), and its cancellation is its own. With company, it hands the
        queue to a sender task and waits like the others, so that no caller's cancellation
        reaches another's write.
        """
        self._senders += 1
        self._waiting += 1
        self._leading.add(pending.future)
        waiting, handed = True, False
        try:
            await asyncio.sleep(0)
            if len(self._queue) != 1 or self._queue[0] is not pending:
                handed = True
                self._start_sender()  # takes over this call's place as the sender
                return await pending.future
            self._queue.clear()
            waiting = False
            self._waiting -= 1
            async with self._acquire():
                await self._run([pending])
            return pending.future.result()
        except asyncio.CancelledError:
            pending.future.cancel()  # not sent, or its answer no longer wanted
            raise
        finally:
            self._leading.discard(pending.future)
            if not handed:
                if waiting:
                    self._waiting -= 1
                self._senders -= 1
                self._spawn()

    def _spawn(self) -> None:
        """Start a sender unless one is already due to take the queue, or too many run."""
        if not self._queue or self._waiting or self._senders >= self.max_in_flight:
            return
        self._senders += 1
        self._waiting += 1
        self._start_sender()

    def _start_sender(self) -> None:
        """A sender task, counted already (in ``_senders`` and ``_waiting``)."""
        assert self._loop is not None
        task = self._loop.create_task(self._sender())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[Pending[OpT]]:
        """Up to ``max_batch`` queued operations whose callers still wait, oldest first."""
        batch: list[Pending[OpT]] = []
        taken = 0
        for pending in self._queue:
            taken += 1
            if not pending.settled:
                batch.append(pending)
                if len(batch) == self.max_batch:
                    break
        del self._queue[:taken]
        return batch

    async def _sender(self) -> None:
        waiting = True
        try:
            while self._queue:
                async with self._acquire():
                    waiting = False
                    self._waiting -= 1
                    batch = self._take()
                    self._spawn()  # more than one batch was queued: the rest need not wait
                    if batch:
                        await self._send(batch)
                if not self._queue:
                    break
                waiting = True
                self._waiting += 1
        except asyncio.CancelledError:
            # The event loop is shutting down: nothing queued will be sent.
            for pending in self._queue:
                pending.future.cancel()
            self._queue.clear()
            raise
        finally:
            if waiting:
                self._waiting -= 1
            self._senders -= 1
        self._spawn()  # operations queued while every sender was busy

    async def _send(self, batch: list[Pending[OpT]]) -> None:
        try:
            await self._run(batch)
        except asyncio.CancelledError:
            for pending in batch:
                pending.future.cancel()
            raise
        except BaseException as exc:  # a bug in run: its operations fail, not the sender
            for pending in batch:
                pending.fail(exc)
            if not isinstance(exc, Exception):
                raise

    async def drain(self) -> None:
        """Wait until every operation sent or queued has been answered (before closing a
        store). Waiting is all it does: cancelling it cancels no operation."""
        if self._loop is not asyncio.get_running_loop():
            return  # the senders of another loop ended with it
        while self._tasks or self._leading:
            await asyncio.wait({*self._tasks, *self._leading})
