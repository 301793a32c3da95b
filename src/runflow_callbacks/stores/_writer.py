"""Group commit for the SQLite store: one writer thread, one transaction per group of writes.

Every write of a :class:`~runflow_callbacks.stores.sqlite.SQLiteStore` is a function of the
writer's connection, queued by :meth:`GroupWriter.submit`. The writer thread takes everything
queued (up to ``max_group`` operations), runs it in one ``BEGIN IMMEDIATE … COMMIT``, and only
once that COMMIT returned (``synchronous=FULL``: the group is on disk) hands the answers back to
each event loop with a single ``call_soon_threadsafe`` for the whole group. Why:

- an fsync per callback, not SQLite, was what bounded the store, and callbacks in flight
  together now share one: 16 concurrent callbacks cost two durable commits in all, not 32;
- each hand-off between threads costs a wake-up and GIL traffic on both sides, so there is one
  per group each way, not one per operation: the operations an event loop queues during one
  iteration of the loop (above all the callbacks a group's answers woke up) are put on the
  writer's queue together when that iteration is over, and the writer takes everything queued
  while it was committing the previous group;
- nothing is acknowledged before it is durable, because no future is resolved before COMMIT.

One operation failing must not fail the others of its group. The happy path runs the group
without savepoints (two statements fewer per operation). An operation that raises without
having changed anything (``UnknownCallbackError`` after a read) just fails on its own. Anything
else (a SQLite error, or an error after a write) rolls the group back and runs it again
"carefully": each operation in a ``SAVEPOINT`` of its own, so a failing one is rolled back alone
and the rest commit. An error that ends the whole transaction (SQLite rolls back by itself on
some I/O errors) fails the operation that raised it, and the careful pass starts over without
it, so a group needs at most one pass per failing operation.

``BEGIN IMMEDIATE`` takes SQLite's write lock up front: when another connection (another
process, or another store object) holds it, SQLite's busy handler waits up to the store's
``busy_timeout`` before the group fails with :class:`StoreError` ("locked"), exactly as one
operation did before. Statements inside the transaction then never meet a busy lock (WAL: a
commit does not wait for readers), which is what makes the group atomic across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import queue
import sqlite3
import threading
from typing import TYPE_CHECKING, Any, Final, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

    from runflow_callbacks.errors import StoreError

__all__ = ["GroupWriter"]

T = TypeVar("T")

# What a queued operation is: its work, the future its caller awaits, and that future's loop.
_Op = tuple["Callable[[sqlite3.Connection], Any]", "asyncio.Future[Any]", asyncio.AbstractEventLoop]
# An answer: (True, value) or (False, the exception to raise).
_Outcome = tuple[bool, Any]

#: Big enough that a burst shares few commits, small enough that the first operation of a
#: group does not wait long behind the last one.
MAX_GROUP: Final = 256


class _Stop:
    """The queue's last item: the writer drains what came before it, closes, and answers."""

    __slots__ = ("future", "loop")

    def __init__(self, future: asyncio.Future[None], loop: asyncio.AbstractEventLoop) -> None:
        self.future = future
        self.loop = loop


class _GroupFailed(Exception):  # noqa: N818 - internal signal, never seen outside this module
    """The group as a whole failed (open, BEGIN, SAVEPOINT bookkeeping or COMMIT)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class GroupWriter:
    """One thread owning one connection, committing queued operations in groups.

    ``connect`` opens the writer's connection (in the writer thread, on the first group, and
    again after it failed); it raises only :class:`StoreError`. ``failure`` turns a
    ``sqlite3.Error`` into the :class:`StoreError` its caller sees. The thread starts with the
    first operation (opening a store does no I/O) and is a daemon, so a store nobody closed does
    not keep the process alive; what it had not committed was not acknowledged either.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        failure: Callable[[sqlite3.Error], StoreError],
        *,
        name: str,
        max_group: int = MAX_GROUP,
    ) -> None:
        self._connect = connect
        self._failure = failure
        self._name = name
        self._max_group = max_group
        self._queue: queue.SimpleQueue[list[_Op] | _Stop] = queue.SimpleQueue()
        # Operations submitted during the current iteration of each event loop, handed to the
        # writer together when the iteration is over (see submit).
        self._pending: dict[asyncio.AbstractEventLoop, list[_Op]] = {}
        self._thread: threading.Thread | None = None
        # Guards starting the thread, and the queue once the thread has stopped: an operation
        # put after the thread's last look at the queue would never be answered.
        self._start_lock = threading.Lock()
        self._stopped = False
        self._closing = False
        self._connection: sqlite3.Connection | None = None
        #: Groups committed and operations in them (for tests and benchmarks: how well the
        #: operations in flight shared their commits).
        self.groups = 0
        self.operations = 0

    # --- the event loop's side -------------------------------------------------------------

    def submit(self, work: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``work``; the future resolves once the COMMIT holding it returned."""
        if self._closing:
            raise RuntimeError("this store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            # The first operation of this loop iteration: the ones that follow in the same
            # iteration (the callbacks a group's answers woke up, above all) join it, and the
            # writer is woken once for all of them, not once for each.
            pending = self._pending[loop] = []
            loop.call_soon(self._flush, loop)
        pending.append((work, future, loop))
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        ops = self._pending.pop(loop, None)
        if not ops:
            return
        if self._thread is not None and not self._closing:
            self._queue.put(ops)  # the usual case: no lock needed
            return
        with self._start_lock:
            if self._stopped:  # another loop closed the store meanwhile
                _settle(ops, [(False, RuntimeError("this store is closed")) for _ in ops])
                return
            if self._thread is None:
                thread = threading.Thread(target=self._main, name=self._name, daemon=True)
                thread.start()
                self._thread = thread
            self._queue.put(ops)

    async def close(self) -> None:
        """Commit everything queued so far, close the connection and stop the thread."""
        if self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        self._flush(loop)  # what this loop queued just now is committed before the stop
        with self._start_lock:
            if self._thread is None:
                self._stopped = True  # never started: nothing to drain, nothing may start it
                return
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Stop(done, loop))
        await done

    # --- the writer thread -----------------------------------------------------------------

    def _main(self) -> None:
        stop: _Stop | None = None
        while stop is None:
            group, stop = self._take()
            if group:
                self._commit(group)
            # Let go of the group's work before waiting for the next: it may hold what it wrote
            # (a 16 MiB body, say), which would otherwise live on until more work came.
            del group
        if self._connection is not None:
            self._connection.close()  # in this thread: the connection belongs to it
            self._connection = None
        # Whatever raced in behind the stop mark (another loop's operations) is refused.
        with self._start_lock:
            self._stopped = True
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not isinstance(item, _Stop):
                    _settle(item, [(False, RuntimeError("this store is closed")) for _ in item])
        _call_soon(stop.loop, _finish_stop, stop.future)

    def _take(self) -> tuple[list[_Op], _Stop | None]:
        """Wait for work, then take everything queued behind it (up to ``max_group``)."""
        item = self._queue.get()
        group: list[_Op] = []
        while True:
            if isinstance(item, _Stop):
                return group, item
            group += item
            # One consumer: a queue that is not empty stays so until this thread takes from it.
            if len(group) >= self._max_group or self._queue.empty():
                return group, None
            item = self._queue.get_nowait()

    def _commit(self, group: list[_Op]) -> None:
        # A caller cancelled before its group started is not run, as an executor job is not.
        live = [op for op in group if not op[1].cancelled()]
        if not live:
            return
        try:
            outcomes = self._transact(live)
        except _GroupFailed as failed:
            outcomes = [(False, self._fresh(failed.cause)) for _ in live]
        except BaseException as error:  # noqa: BLE001 - a bug of ours: still answer every caller
            self._abandon()
            outcomes = [(False, error) for _ in live]
        else:
            self.groups += 1
            self.operations += len(live)
        _settle(live, outcomes)

    def _fresh(self, error: BaseException) -> BaseException:
        """An exception of its own for each caller (one object raised in several tasks would
        collect all their tracebacks)."""
        if isinstance(error, sqlite3.Error):
            return self._failure(error)
        return copy.copy(error)

    def _wrap(self, error: Exception) -> BaseException:
        return self._failure(error) if isinstance(error, sqlite3.Error) else error

    def _abandon(self) -> None:
        """Roll back whatever is open (after a failure); a broken connection is let be."""
        connection = self._connection
        if connection is not None and connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.rollback()

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            try:
                self._connection = self._connect()
            except Exception as error:  # noqa: BLE001 - StoreError, or a bug: every caller hears
                raise _GroupFailed(error) from None
        return self._connection

    def _begin(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute("BEGIN IMMEDIATE")  # waits for another writer up to busy_timeout
        except sqlite3.Error as error:
            raise _GroupFailed(error) from None

    def _finish(self, connection: sqlite3.Connection) -> None:
        try:
            connection.commit()  # one fsync for the whole group (synchronous=FULL)
        except sqlite3.Error as error:
            self._abandon()
            raise _GroupFailed(error) from None

    def _transact(self, live: list[_Op]) -> list[_Outcome]:
        """The happy path: the whole group in one transaction, no savepoints."""
        connection = self._open()
        self._begin(connection)
        outcomes: list[_Outcome] = []
        for work, _, _ in live:
            changed = connection.total_changes
            try:
                outcomes.append((True, work(connection)))
            except sqlite3.Error:
                return self._careful(connection, live)
            except Exception as error:  # noqa: BLE001 - the operation's own error, for its caller
                if connection.total_changes != changed or not connection.in_transaction:
                    return self._careful(connection, live)
                outcomes.append((False, error))  # it changed nothing: nothing to undo
        self._finish(connection)
        return outcomes

    def _careful(self, connection: sqlite3.Connection, live: list[_Op]) -> list[_Outcome]:
        """The group again, each operation in its own savepoint, so that one that fails is
        rolled back alone."""
        self._abandon()
        outcomes: dict[int, _Outcome] = {}
        pending = list(range(len(live)))
        while True:
            self._begin(connection)
            passed: dict[int, _Outcome] = {}
            ended_by: int | None = None
            for index in pending:
                self._statement(connection, "SAVEPOINT one")
                try:
                    value = live[index][0](connection)
                except Exception as error:  # noqa: BLE001 - the operation's error, for its caller
                    if not connection.in_transaction:
                        # The error ended the whole transaction: it fails, the rest run again.
                        outcomes[index] = (False, self._wrap(error))
                        ended_by = index
                        break
                    self._statement(connection, "ROLLBACK TO one")
                    self._statement(connection, "RELEASE one")
                    passed[index] = (False, self._wrap(error))
                else:
                    self._statement(connection, "RELEASE one")
                    passed[index] = (True, value)
            if ended_by is None:
                break
            pending = [index for index in pending if index != ended_by]
        self._finish(connection)
        outcomes.update(passed)
        return [outcomes[index] for index in range(len(live))]

    def _statement(self, connection: sqlite3.Connection, sql: str) -> None:
        try:
            connection.execute(sql)
        except sqlite3.Error as error:
            self._abandon()
            raise _GroupFailed(error) from None


def _call_soon(
    loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any
) -> None:
    # A loop that is closed raises RuntimeError: nobody is waiting for these answers any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _settle(ops: list[_Op], outcomes: list[_Outcome]) -> None:
    """Hand the answers back: one ``call_soon_threadsafe`` per event loop in the group."""
    loop = ops[0][2]
    if all(op[2] is loop for op in ops):
        _call_soon(loop, _resolve, [op[1] for op in ops], outcomes)
        return
    by_loop: dict[asyncio.AbstractEventLoop, tuple[list[asyncio.Future[Any]], list[_Outcome]]]
    by_loop = {}
    for op, outcome in zip(ops, outcomes, strict=True):
        futures, answers = by_loop.setdefault(op[2], ([], []))
        futures.append(op[1])
        answers.append(outcome)
    for each, (futures, answers) in by_loop.items():
        _call_soon(each, _resolve, futures, answers)


def _resolve(futures: list[asyncio.Future[Any]], outcomes: list[_Outcome]) -> None:
    """On the loop: resolve each future that is still waited for."""
    for future, (ok, value) in zip(futures, outcomes, strict=True):
        if future.done():  # cancelled meanwhile
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _finish_stop(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
