"""The SQLite store: the embedded default, safe for several processes on one machine.

Uses the standard library's ``sqlite3`` with the WAL journal (readers never wait for the
writer) and ``synchronous=FULL`` (a recorded callback survives a power cut). Every write goes to
one private writer thread per store (``_writer.GroupWriter``), which commits the writes queued
by the callbacks in flight together, in one ``BEGIN IMMEDIATE … COMMIT`` and so one fsync per
group, and answers each of them only once that COMMIT returned. ``BEGIN IMMEDIATE`` takes the
write lock first, so two processes claiming the same key serialize on SQLite's write lock and
exactly one wins. Reads (``get``, ``list_callbacks``, ``stats``, ``list_rejected``,
``get_rejected``) run on a second private thread with a connection of their own, so that they
never wait behind a group's fsync; each reads what was committed when it started, which
includes every write already answered. The rare writes (``prune``, ``keep_rejected``,
``mark_replayed``, ``reset_for_retry``) go through the writer like the rest.

Retention keeps a tombstone's ``pruned_at`` in the callbacks table; ``prune`` is one DELETE of
old tombstones and then one UPDATE, each walking a partial index over ``updated_at`` that holds
only the rows it looks for (finished and not pruned; pruned), so neither reads the whole table
and no write of a callback in flight touches either index. Kept rejected requests have a table
of their own, ``<namespace>_rejected``, whose ``AUTOINCREMENT`` ids are never given twice.
A file an earlier version made is upgraded when a store first opens it for writing: the
missing tables and indexes are created, and ``pruned_at`` is added (``ALTER TABLE … ADD
COLUMN``, under the write lock and after looking again, so that processes opening the file
together add it once). Opened ``read_only``, such a file is read as it is, unchanged.

A body too big to sit in its row's page (``_SIDE_BODY_BYTES`` and more), and an empty one, is
kept in a side table, ``<namespace>_bodies (key, body)``, and its row's ``body`` is left empty
(``x''``). Such a body is written in the same transaction as its row, as a ``zeroblob`` of its
size that is then filled through an incremental BLOB handle (``Connection.blobopen``), chunk by
chunk, straight from the caller's bytes: it is never bound as a parameter, which SQLite would
copy (``SQLITE_TRANSIENT``) and the statement cache would keep until the statement's next use,
and no later UPDATE of the row (complete, fail, renew, claim) has SQLite rebuild a record holding
it. A 16 MiB callback through ``serve`` so costs about its own size once, not three or four
times. A read takes the side body when the row's own body is empty and the row is not a
tombstone, so rows an earlier version wrote (body in the row) read as they always did, with no
migration, and a store opened ``read_only`` on a file without the side table reads the row's
body only. ``prune`` deletes the side bodies of the rows it prunes, and of the tombstones it
removes. On Python 3.10 (no ``blobopen``) the side body is bound as a parameter instead.

A busy database (another connection holds the lock SQLite needs) is waited on for up to
``busy_timeout`` before :class:`~runflow_callbacks.errors.StoreError` is raised; any other
failure (a read-only file, a file that is no database, a missing directory, a permission error)
raises it at once, with a one-line message that names the file but not its directory. A write
that fails fails alone: the other writes of its group still commit.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from runflow_callbacks.errors import StoreError
from runflow_callbacks.stores import (
    DEFAULT_NAMESPACE,
    PRUNABLE_STATES,
    Admission,
    Claim,
    Pruned,
    Recorded,
    RejectedRequest,
    StoreBase,
    StoredCallback,
    StoreStats,
    UnknownCallbackError,
    aware,
    check_lease,
    check_limit,
    check_namespace,
    check_prune,
    check_state,
    check_window,
    rejected_id,
)
from runflow_callbacks.stores._state import (
    as_claimed,
    can_claim,
    from_us,
    new_record,
    new_token,
    record_from_row,
    resettable,
    to_us,
)
from runflow_callbacks.stores._text import from_sqlite, to_sqlite
from runflow_callbacks.stores._writer import GroupWriter

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from runflow_callbacks.stores import IncomingCallback, State

__all__ = ["SQLiteStore"]

T = TypeVar("T")
# SQLite's primary result codes (stable C API constants; the sqlite3 module names them only
# from Python 3.11 on, as it gives them to exceptions as ``sqlite_errorcode``).
_PERM: Final = 3
_BUSY: Final = 5
_LOCKED: Final = 6
_READONLY: Final = 8
_IOERR: Final = 10
_CORRUPT: Final = 11
_FULL: Final = 13
_CANTOPEN: Final = 14
_AUTH: Final = 23
_NOTADB: Final = 26
_BY_MESSAGE: Final = {  # Python 3.10: only the message tells
    "database is locked": _BUSY,
    "database table is locked": _LOCKED,
    "attempt to write a readonly database": _READONLY,
    "disk I/O error": _IOERR,
    "database disk image is malformed": _CORRUPT,
    "database or disk is full": _FULL,
    "unable to open database file": _CANTOPEN,
    "authorization denied": _AUTH,
    "file is not a database": _NOTADB,
    "access permission denied": _PERM,
}
_COLUMNS: Final = (
    "key, kind, subject_id, event, body, headers, secret_id, secret_label, request_id, "
    "received_at, source, state, attempts, deliveries, last_error, next_attempt_at, "
    "lease_expires_at, processed_at, updated_at, lease_token, due_at"
)
# What a read selects: the columns written plus ``pruned_at``, which no INSERT names (a new
# row is never a tombstone: it starts NULL).
_SELECTED: Final = _COLUMNS + ", pruned_at"
# A store an earlier version made has no ``pruned_at`` until first opened for writing; read
# only, it cannot be upgraded, and its rows are all read as not pruned.
_SELECTED_BEFORE_PRUNE: Final = _COLUMNS + ", NULL AS pruned_at"
_REJECTED_COLUMNS: Final = (
    "id, received_at, reason, path, headers, body, body_bytes, replayed_at, replayed_key"
)
# A body of this size or more (and an empty one) goes to the side table: one this big does not
# fit in its row's page anyway (4 KiB), so every UPDATE of the row would have SQLite rebuild its
# overflow chain, and binding it would have SQLite keep copies (see the module docstring).
_SIDE_BODY_BYTES: Final = 4096
# How much of a side body one ``Blob.write`` takes (a slice of the caller's bytes, no copy).
_BLOB_CHUNK: Final = 1024 * 1024
_BLOBOPEN: Final = sys.version_info >= (3, 11)
# The largest id SQLite's INTEGER PRIMARY KEY holds: a longer string is no id of ours.
_INSERT: Final = (
    "INSERT INTO {table} (" + _COLUMNS + ") VALUES (:key, :kind, :subject_id, :event, :body,"  # noqa: S608 - {table} is a checked namespace
    " :headers, :secret_id, :secret_label, :request_id, :received_at, :source, :state,"
    " :attempts, :deliveries, NULL, NULL, :expires, NULL, :updated_at, :token, :due_at)"
    " ON CONFLICT (key) DO NOTHING"
)
# Whether record_and_claim takes the lease of an existing row: the rule of can_claim (with
# unhandled first woken to received, which is claimable anyway), read from the row as it was.
# Equalities, not ``state IN (...)``: SQLite builds an ephemeral table for each constant IN
# list (six per UPDATE here), and allocating and freeing those cost a duplicate ~150 µs of
# system time (the writer thread's malloc arena trimmed and refaulted) for nothing.
_TAKES: Final = (
    "(:take AND (state = 'received' OR state = 'failed' OR state = 'unhandled'"
    " OR (state = 'processing' AND (lease_expires_at IS NULL OR lease_expires_at <= :now))))"
)
# A duplicate's whole admission in one statement. Every SET expression reads the row as it
# was before the UPDATE; RETURNING reads it as it is after.
_ADMIT: Final = (
    "UPDATE {table} SET deliveries = deliveries + :delivered,"  # noqa: S608 - a checked name
    f" state = CASE WHEN {_TAKES} THEN 'processing'"
    " WHEN state = 'unhandled' THEN 'received' ELSE state END,"
    f" attempts = CASE WHEN {_TAKES} THEN attempts + 1 ELSE attempts END,"
    f" lease_token = CASE WHEN {_TAKES} THEN :token ELSE lease_token END,"
    f" lease_expires_at = CASE WHEN {_TAKES} THEN :expires ELSE lease_expires_at END,"
    f" due_at = CASE WHEN {_TAKES} THEN :expires WHEN state = 'unhandled' THEN :now"
    " ELSE due_at END,"
    f" updated_at = CASE WHEN {_TAKES} OR state = 'unhandled' THEN :now"
    " WHEN :delivered THEN :received_at ELSE updated_at END"
    " WHERE key = :key RETURNING state, attempts, coalesce(lease_token = :token, 0)"
)
_RELEASE: Final = (
    "UPDATE {table} SET state = 'unhandled', attempts = max(attempts - 1, 0),"
    " lease_token = NULL, lease_expires_at = NULL, next_attempt_at = NULL, due_at = NULL,"
    " updated_at = :now WHERE key = :key AND state = 'processing' AND lease_token = :token"
)
# complete, fail and renew: one UPDATE that only the current token's holder gets to make.
_HELD: Final = " WHERE key = ? AND state = 'processing' AND lease_token = ?"
_COMPLETE: Final = (
    "UPDATE {table} SET state = 'processed', processed_at = ?, next_attempt_at = NULL,"  # noqa: S608 - a checked name
    " updated_at = ?, due_at = NULL, lease_token = NULL, lease_expires_at = NULL" + _HELD
)


def _selection(table: str, *, pruned: bool = True, bodies: bool = True) -> str:
    """What a read of ``table`` selects: ``_SELECTED`` with the body taken from the side table
    when the row's own is empty and the row no tombstone (``bodies``); without ``pruned_at``
    (a file an earlier version made, opened read-only) every row is read as not pruned."""
    columns = _SELECTED if pruned else _SELECTED_BEFORE_PRUNE
    if not bodies:
        return columns
    side = f"(SELECT side.body FROM {table}_bodies AS side WHERE side.key = {table}.key)"  # noqa: S608 - a checked name
    # length() of a BLOB reads only its header, so rows with their body inline (the usual
    # case) skip the side table; coalesce keeps an empty inline body of an earlier version.
    return columns.replace(
        ", body,",
        f", CASE WHEN length(body) = 0 AND pruned_at IS NULL THEN coalesce({side}, body)"
        " ELSE body END AS body,",
        1,
    )


def _us(moment: datetime | None) -> int | None:
    return None if moment is None else to_us(moment)


def _dt(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def _to_record(row: sqlite3.Row) -> StoredCallback:
    return record_from_row(row, _dt, from_sqlite)


def _text(value: str | bytes) -> str:
    """A NOT NULL text column as :func:`from_sqlite` reads it back."""
    text = from_sqlite(value)
    assert text is not None
    return text


def _to_rejected(row: sqlite3.Row) -> RejectedRequest:
    received_at = _dt(row["received_at"])
    assert received_at is not None
    return RejectedRequest(
        id=str(row["id"]),
        received_at=received_at,
        reason=_text(row["reason"]),
        path=_text(row["path"]),
        headers=json.loads(row["headers"]),
        body=bytes(row["body"]),
        body_bytes=row["body_bytes"],
        replayed_at=_dt(row["replayed_at"]),
        replayed_key=from_sqlite(row["replayed_key"]),
    )


def _aside(body: bytes) -> bool:
    """Whether ``body`` is kept in the side table rather than in its row."""
    return not body or len(body) >= _SIDE_BODY_BYTES


def _result_code(error: sqlite3.Error) -> int | None:
    """The primary SQLite result code of ``error`` (None when it cannot be told)."""
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return code & 0xFF  # an extended code carries its primary one in the low byte
    return _BY_MESSAGE.get(str(error))


def _busy(error: sqlite3.Error) -> bool:
    """Whether ``error`` says the lock SQLite needs is held elsewhere: worth waiting for."""
    return _result_code(error) in {_BUSY, _LOCKED}


class SQLiteStore(StoreBase):
    """A :class:`~runflow_callbacks.stores.CallbackStore` in one SQLite file.

    ``namespace`` is the table name (``<namespace>_counters`` holds the rejected count,
    ``<namespace>_rejected`` the kept rejected requests and ``<namespace>_bodies`` the bodies
    too big for their rows). The file (with ``create``, the
    default) and its WAL companions are created on first use; its directory never is: a
    missing one is a :class:`StoreError`. With ``create=False`` a missing file is a
    :class:`StoreError` too ("the SQLite store ... does not exist"), for commands that only
    look at a store and must not leave an empty one behind. ``read_only`` opens the file for
    reading only (it must exist): reads work as usual, every write raises :class:`StoreError`
    at once, and nothing is created (nor upgraded). Several ``SQLiteStore`` objects, in one
    process or many, may open the same file.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        busy_timeout: timedelta = timedelta(seconds=30),
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.namespace = check_namespace(namespace)
        self.busy_timeout = busy_timeout
        self.create = create and not read_only
        self.read_only = read_only
        # Writes: one thread, one connection, group commit (see _writer).
        self._writer = GroupWriter(self._open, self._failure, name="runflow-sqlite-writer")
        # Reads: a thread and a connection of their own, so that they never queue behind a
        # group's fsync (WAL readers do not wait for the writer).
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="runflow-sqlite-read")
        self._read_connection: sqlite3.Connection | None = None
        self._closed = False
        # Formatted once: record_and_claim and complete are the hot path of every delivery.
        self._admit_sql = (
            _INSERT.format(table=self.namespace),
            _ADMIT.format(table=self.namespace),
        )
        self._complete_sql = _COMPLETE.format(table=self.namespace)
        self._release_sql = _RELEASE.format(table=self.namespace)
        self._put_body_sql = (
            f"INSERT OR REPLACE INTO {self.namespace}_bodies (key, body)"  # noqa: S608 - checked
            + (" VALUES (?, zeroblob(?))" if _BLOBOPEN else " VALUES (?, ?)")
        )
        # What reads select, and whether the table of rejected requests exists: both change
        # only for a read-only store on a file an earlier version made (see _prepare).
        self._selected = _selection(self.namespace)
        self._keeps_rejected = True

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, namespace={self.namespace!r})"

    # --- plumbing ----------------------------------------------------------------------

    def _failure(self, error: sqlite3.Error | OSError) -> StoreError:
        """The :class:`StoreError` for ``error``: one line, naming the file but not its
        directory (whose path may tell more than the operator wants in a log)."""
        name = repr(self.path.name)
        # An OSError's str() names the path; its strerror does not.
        text = (error.strerror or "") if isinstance(error, OSError) else str(error)
        reason = " ".join(text.split()) or type(error).__name__
        code = _result_code(error) if isinstance(error, sqlite3.Error) else None
        if code in {_BUSY, _LOCKED}:  # after busy_timeout
            return StoreError(f"the SQLite store {name} is locked by another connection ({reason})")
        if code == _READONLY:
            return StoreError(f"the SQLite store {name} is read-only ({reason})")
        if code == _NOTADB:
            return StoreError(f"the SQLite store {name} is not a SQLite database ({reason})")
        if code == _CORRUPT:
            return StoreError(f"the SQLite store {name} is corrupt ({reason})")
        if code in {_IOERR, _FULL}:
            return StoreError(f"cannot read or write the SQLite store {name} ({reason})")
        if code in {_CANTOPEN, _PERM, _AUTH} or isinstance(error, OSError):
            return StoreError(f"cannot open the SQLite store {name} ({reason})")
        return StoreError(f"SQLite store error: {reason}")

    def _open(self) -> sqlite3.Connection:
        """A new connection (the schema made if need be), for the thread that calls this;
        raises only :class:`StoreError`."""
        name = repr(self.path.name)
        try:
            directory = self.path.parent.is_dir()
        except OSError as exc:
            raise self._failure(exc) from None
        if not directory:
            raise StoreError(f"cannot open the SQLite store {name}: its directory does not exist")
        mode = "ro" if self.read_only else "rwc" if self.create else "rw"
        try:
            connection = sqlite3.connect(
                f"{self.path.absolute().as_uri()}?mode={mode}",
                uri=True,
                timeout=self.busy_timeout.total_seconds(),
                isolation_level=None,  # the writer's explicit BEGIN IMMEDIATE / COMMIT
                check_same_thread=True,  # each connection belongs to one thread
            )
        except sqlite3.Error as exc:
            if not self.create and not self.path.exists():
                raise StoreError(f"the SQLite store {name} does not exist") from None
            raise self._failure(exc) from None
        connection.row_factory = sqlite3.Row
        try:
            self._prepare(connection)
        except sqlite3.Error as exc:
            connection.close()
            raise self._failure(exc) from None
        except BaseException:
            connection.close()
            raise
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        table = self.namespace
        connection.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout.total_seconds() * 1000)}")
        if self.read_only:
            # Nothing to set up that reading needs, and nothing may be written: a table an
            # earlier version made is read as it is (no tombstones in it, then).
            columns = self._columns(connection, table)
            if columns:
                self._selected = _selection(
                    table,
                    pruned="pruned_at" in columns,
                    bodies=bool(self._columns(connection, f"{table}_bodies")),
                )
            if columns and not self._columns(connection, f"{table}_rejected"):
                self._keeps_rejected = False
            return
        # Switching a new file to WAL takes a lock SQLite's busy handler does not wait for, so
        # processes opening the same new file together retry here (bounded by busy_timeout).
        # Only that lock is waited for: any other error (a read-only file, a file that is no
        # database, a journal that cannot be created) will not go away by waiting.
        deadline = time.monotonic() + self.busy_timeout.total_seconds()
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        connection.execute("PRAGMA synchronous = FULL")
        connection.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS {table} (
                key TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                subject_id TEXT,
                event TEXT,
                body BLOB NOT NULL,
                headers TEXT NOT NULL,
                secret_id TEXT,
                secret_label TEXT,
                request_id TEXT,
                received_at INTEGER NOT NULL,
                source TEXT NOT NULL,
                state TEXT NOT NULL,
                attempts INTEGER NOT NULL,
                deliveries INTEGER NOT NULL,
                last_error TEXT,
                next_attempt_at INTEGER,
                lease_expires_at INTEGER,
                processed_at INTEGER,
                updated_at INTEGER NOT NULL,
                lease_token TEXT,
                due_at INTEGER,
                pruned_at INTEGER
            );
            CREATE INDEX IF NOT EXISTS {table}_by_received ON {table} (received_at, key);
            CREATE INDEX IF NOT EXISTS {table}_by_state ON {table} (state, received_at);
            CREATE INDEX IF NOT EXISTS {table}_by_due ON {table} (due_at, key)
                WHERE due_at IS NOT NULL;
            CREATE TABLE IF NOT EXISTS {table}_counters (
                name TEXT PRIMARY KEY,
                value INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {table}_rejected (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                received_at INTEGER NOT NULL,
                reason TEXT NOT NULL,
                path TEXT NOT NULL,
                headers TEXT NOT NULL,
                body BLOB NOT NULL,
                body_bytes INTEGER NOT NULL,
                replayed_at INTEGER,
                replayed_key TEXT
            );
            CREATE TABLE IF NOT EXISTS {table}_bodies (
                key TEXT PRIMARY KEY,
                body BLOB NOT NULL
            );
            """
        )
        if "pruned_at" not in self._columns(connection, table):
            self._add_pruned_at(connection)
        # What prune looks for, and only that: finished callbacks not yet pruned, and
        # tombstones. Partial indexes, so that no write of a callback still in flight touches
        # them; prune's WHERE clauses repeat their conditions word for word, which is how
        # SQLite knows it may use them.
        connection.executescript(
            f"""
            CREATE INDEX IF NOT EXISTS {table}_by_finished ON {table} (updated_at)
                WHERE pruned_at IS NULL AND (state = 'processed' OR state = 'dead');
            CREATE INDEX IF NOT EXISTS {table}_by_pruned ON {table} (updated_at)
                WHERE pruned_at IS NOT NULL;
            """
        )

    @staticmethod
    def _columns(connection: sqlite3.Connection, table: str) -> set[str]:
        """The columns of ``table`` (none when it does not exist)."""
        return {column["name"] for column in connection.execute(f"PRAGMA table_info({table})")}

    def _add_pruned_at(self, connection: sqlite3.Connection) -> None:
        """Upgrade a table an earlier version made: add ``pruned_at`` (NULL: not pruned).

        Under the write lock, looking again once it is held: several processes opening the
        same old file together add the column once, and the others find it added. Adding a
        nullable column rewrites no row, so this is quick however big the table.
        """
        connection.execute("BEGIN IMMEDIATE")  # waits for another writer up to busy_timeout
        try:
            if "pruned_at" not in self._columns(connection, self.namespace):
                connection.execute(f"ALTER TABLE {self.namespace} ADD COLUMN pruned_at INTEGER")
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``work`` for the writer's next group; it runs inside that group's transaction
        and its answer comes once the group is committed (a ``sqlite3.Error`` it raises reaches
        the caller as :class:`StoreError`)."""
        if self._closed:
            raise RuntimeError("this store is closed")
        return self._writer.submit(work)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise RuntimeError("this store is closed")

        def call() -> T:
            if self._read_connection is None:
                self._read_connection = self._open()
            try:
                return work(self._read_connection)
            except sqlite3.Error as exc:
                raise self._failure(exc) from None

        return await asyncio.get_running_loop().run_in_executor(self._reader, call)

    # ``stored`` is a key as the table holds it (``to_sqlite(key)``, or read from a row).

    def _select(self, connection: sqlite3.Connection, stored: str | bytes) -> sqlite3.Row | None:
        row: sqlite3.Row | None = connection.execute(
            f"SELECT {self._selected} FROM {self.namespace} WHERE key = ?",  # noqa: S608 - ours
            (stored,),
        ).fetchone()
        return row

    def _exists(self, connection: sqlite3.Connection, stored: str | bytes) -> bool:
        return (
            connection.execute(
                f"SELECT 1 FROM {self.namespace} WHERE key = ?",  # noqa: S608 - checked name
                (stored,),
            ).fetchone()
            is not None
        )

    def _put_body(self, connection: sqlite3.Connection, stored: str | bytes, body: bytes) -> None:
        """Write the side body of the row just inserted for ``stored`` (see the module
        docstring): a zeroblob of its size, then its bytes through a BLOB handle."""
        if sys.version_info >= (3, 11):
            # REPLACE: a side body left behind by an earlier version's removal of a tombstone
            # (which knew no side table) gives way to the new row's.
            rowid = connection.execute(self._put_body_sql, (stored, len(body))).lastrowid
            if not body or rowid is None:
                return
            view = memoryview(body)
            with connection.blobopen(f"{self.namespace}_bodies", "body", rowid) as blob:
                for start in range(0, len(view), _BLOB_CHUNK):
                    blob.write(view[start : start + _BLOB_CHUNK])
        else:  # no blobopen: bound (and so copied) as any parameter is
            connection.execute(self._put_body_sql, (stored, body))

    def _update(self, connection: sqlite3.Connection, stored: str | bytes, **values: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in values)
        connection.execute(
            f"UPDATE {self.namespace} SET {assignments} WHERE key = ?",  # noqa: S608 - our names
            (*values.values(), stored),
        )

    # --- the Protocol ------------------------------------------------------------------
    #
    # Every write below is one function of the writer's connection, run inside its group's
    # transaction (so it needs no BEGIN of its own), and none reads a row back after writing
    # it: an answer is built from what the statement returned or from the row read before.

    async def record(self, incoming: IncomingCallback) -> Recorded:
        received_at = _us(aware(incoming.received_at, name="received_at"))
        delivery = incoming.source == "delivery"
        stored = to_sqlite(incoming.key)
        table = self.namespace
        body = incoming.body
        aside = _aside(body)
        params = (
            stored,
            to_sqlite(incoming.kind),
            to_sqlite(incoming.subject_id),
            to_sqlite(incoming.event),
            b"" if aside else sqlite3.Binary(body),
            json.dumps(dict(incoming.headers)),
            to_sqlite(incoming.secret_id),
            to_sqlite(incoming.secret_label),
            to_sqlite(incoming.request_id),
            received_at,
            incoming.source,
            1 if delivery else 0,
            received_at,
            received_at,
        )

        def work(connection: sqlite3.Connection) -> sqlite3.Row | None:
            """None for a new key; the row as the duplicate left it otherwise."""
            cursor = connection.execute(
                f"INSERT INTO {table} ({_COLUMNS}) VALUES "  # noqa: S608 - checked
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'received', 0, ?, NULL, NULL, NULL, NULL,"
                " ?, NULL, ?) ON CONFLICT (key) DO NOTHING",
                params,
            )
            if cursor.rowcount == 1:
                if aside:
                    self._put_body(connection, stored, body)
                return None
            if not delivery:
                return self._select(connection, stored)
            row: sqlite3.Row | None = connection.execute(
                f"UPDATE {table} SET deliveries = deliveries + 1, updated_at = ?"  # noqa: S608
                f" WHERE key = ? RETURNING {self._selected}",
                (received_at, stored),
            ).fetchone()
            return row

        existing = await self._write(work)
        if existing is None:
            # Exactly the row just inserted (text and headers read back as they went in).
            return Recorded(new_record(incoming), inserted=True)
        return Recorded(_to_record(existing), inserted=False)

    async def record_and_claim(
        self, incoming: IncomingCallback, *, now: datetime, lease: timedelta | None
    ) -> Admission:
        received_at = to_us(aware(incoming.received_at, name="received_at"))
        now = aware(now)
        lease = None if lease is None else check_lease(lease)
        now_us = to_us(now)
        token = None if lease is None else new_token()
        expires = None if lease is None else to_us(now + lease)
        delivered = 1 if incoming.source == "delivery" else 0
        stored = to_sqlite(incoming.key)
        body = incoming.body
        aside = _aside(body)
        row: dict[str, Any] = {
            "key": stored,
            "kind": to_sqlite(incoming.kind),
            "subject_id": to_sqlite(incoming.subject_id),
            "event": to_sqlite(incoming.event),
            "body": b"" if aside else sqlite3.Binary(body),
            "headers": json.dumps(dict(incoming.headers)),
            "secret_id": to_sqlite(incoming.secret_id),
            "secret_label": to_sqlite(incoming.secret_label),
            "request_id": to_sqlite(incoming.request_id),
            "received_at": received_at,
            "source": incoming.source,
            "deliveries": delivered,
            "token": token,
            "expires": expires,
        }
        if lease is None:
            row.update(state="received", attempts=0, updated_at=received_at, due_at=received_at)
        else:
            row.update(state="processing", attempts=1, updated_at=now_us, due_at=expires)
        insert, admit = self._admit_sql
        changes = {
            "key": stored,
            "delivered": delivered,
            "received_at": received_at,
            "take": lease is not None,
            "now": now_us,
            "token": token,
            "expires": expires,
        }

        def work(connection: sqlite3.Connection) -> Admission:
            # A new key is written in its final state at once (recorded and claimed by one
            # INSERT); a duplicate is admitted by one UPDATE that says what it left. No row is
            # read back either way.
            if connection.execute(insert, row).rowcount == 1:
                if aside:
                    self._put_body(connection, stored, body)
                return Admission(
                    inserted=True, state=row["state"], attempts=row["attempts"], token=token
                )
            [(state, attempts, acquired)] = connection.execute(admit, changes).fetchall()
            return Admission(
                inserted=False,
                state=state,
                attempts=attempts,
                token=token if acquired else None,
            )

        return await self._write(work)

    def _take(
        self, connection: sqlite3.Connection, row: sqlite3.Row, now: datetime, lease: timedelta
    ) -> Claim:
        token = new_token()
        self._update(
            connection,
            row["key"],
            state="processing",
            attempts=row["attempts"] + 1,
            lease_expires_at=_us(now + lease),
            lease_token=token,
            updated_at=_us(now),
            due_at=_us(now + lease),
        )
        # The record as the UPDATE left it, by the rule every backend shares (no re-SELECT).
        return Claim(as_claimed(_to_record(row), now, lease), token)

    async def claim(self, key: str, *, now: datetime, lease: timedelta) -> Claim:
        now, lease = aware(now), check_lease(lease)
        stored = to_sqlite(key)

        def work(connection: sqlite3.Connection) -> Claim:
            row = self._select(connection, stored)
            if row is None:
                raise UnknownCallbackError(key)
            if not can_claim(row["state"], _dt(row["lease_expires_at"]), now):
                return Claim(_to_record(row))
            return self._take(connection, row, now, lease)

        return await self._write(work)

    async def _finish(self, key: str, token: str, sql: str, values: tuple[Any, ...]) -> bool:
        """Run ``sql`` (an UPDATE ending in ``_HELD``) if ``token`` holds ``key``."""
        stored = to_sqlite(key)
        params = (*values, stored, token)

        def work(connection: sqlite3.Connection) -> bool:
            # One conditional UPDATE decides; only a refusal looks further, to tell an unknown
            # key (an error) from a stale token (False).
            if connection.execute(sql, params).rowcount == 1:
                return True
            if not self._exists(connection, stored):
                raise UnknownCallbackError(key)
            return False

        return await self._write(work)

    def _held(self, **values: Any) -> tuple[str, tuple[Any, ...]]:
        """The guarded UPDATE setting ``values``, and its parameters (before key and token)."""
        assignments = ", ".join(f"{name} = ?" for name in values)
        sql = f"UPDATE {self.namespace} SET {assignments}{_HELD}"  # noqa: S608 - our names
        return sql, tuple(values.values())

    async def renew(self, key: str, token: str, *, now: datetime, lease: timedelta) -> bool:
        expires = _us(aware(now) + check_lease(lease))
        sql, values = self._held(lease_expires_at=expires, due_at=expires, updated_at=_us(now))
        return await self._finish(key, token, sql, values)

    async def complete(self, key: str, token: str, *, now: datetime) -> bool:
        now_us = to_us(aware(now))
        return await self._finish(key, token, self._complete_sql, (now_us, now_us))

    async def fail(
        self,
        key: str,
        token: str,
        *,
        now: datetime,
        error: str,
        retry_at: datetime | None,
        dead: bool = False,
    ) -> bool:
        retry = None if retry_at is None or dead else _us(aware(retry_at, name="retry_at"))
        now_us = _us(aware(now))
        sql, values = self._held(
            lease_token=None,
            lease_expires_at=None,
            state="dead" if dead else "failed",
            last_error=to_sqlite(error),
            next_attempt_at=retry,
            updated_at=now_us,
            due_at=None if dead else (now_us if retry is None else retry),
        )
        return await self._finish(key, token, sql, values)

    async def release(self, key: str, token: str, *, now: datetime) -> bool:
        stored = to_sqlite(key)
        changes = {"key": stored, "token": token, "now": _us(aware(now))}
        release = self._release_sql

        def work(connection: sqlite3.Connection) -> bool:
            if connection.execute(release, changes).rowcount == 1:
                return True
            if not self._exists(connection, stored):
                raise UnknownCallbackError(key)
            return False

        return await self._write(work)

    async def claim_due(self, *, now: datetime, lease: timedelta, limit: int) -> list[Claim]:
        now, lease = aware(now), check_lease(lease)
        check_limit(limit)
        now_us = _us(now)

        def work(connection: sqlite3.Connection) -> list[Claim]:
            rows = connection.execute(
                f"SELECT {self._selected} FROM {self.namespace} "  # noqa: S608 - checked name
                "WHERE due_at IS NOT NULL AND due_at <= ? ORDER BY due_at, key LIMIT ?",
                (now_us, limit),
            ).fetchall()
            return [self._take(connection, row, now, lease) for row in rows]

        return await self._write(work)

    async def get(self, key: str) -> StoredCallback | None:
        stored = to_sqlite(key)

        def work(connection: sqlite3.Connection) -> StoredCallback | None:
            row = self._select(connection, stored)
            return None if row is None else _to_record(row)

        return await self._read(work)

    async def list_callbacks(
        self,
        *,
        limit: int | None = None,
        state: State | None = None,
        event: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[StoredCallback]:
        check_limit(limit)
        check_state(state)
        check_window(since, until)
        conditions: list[str] = []
        params: list[Any] = []
        for condition, value in (
            ("state = ?", state),
            ("event = ?", to_sqlite(event)),  # a BLOB only ever equals a BLOB: exact
            ("received_at >= ?", _us(since)),
            ("received_at < ?", _us(until)),
        ):
            if value is not None:
                conditions.append(condition)
                params.append(value)
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        params.append(-1 if limit is None else limit)

        def work(connection: sqlite3.Connection) -> list[StoredCallback]:
            rows = connection.execute(
                # self._selected is known once the connection is open (see _prepare).
                f"SELECT {self._selected} FROM {self.namespace} {where}"  # noqa: S608 - ours
                "ORDER BY received_at, key LIMIT ?",
                params,
            ).fetchall()
            return [_to_record(row) for row in rows]

        return await self._read(work)

    async def stats(self) -> StoreStats:
        def work(connection: sqlite3.Connection) -> StoreStats:
            row = connection.execute(
                "SELECT count(*) AS received,"  # noqa: S608 - checked name
                " coalesce(sum(max(deliveries - 1, 0)), 0) AS duplicates,"
                " count(*) FILTER (WHERE state = 'received') AS pending,"
                " count(*) FILTER (WHERE state = 'processing') AS processing,"
                " count(*) FILTER (WHERE state = 'processed') AS processed,"
                " count(*) FILTER (WHERE state = 'failed') AS failed,"
                " count(*) FILTER (WHERE state = 'dead') AS dead,"
                " count(*) FILTER (WHERE state = 'unhandled') AS unhandled,"
                " count(*) FILTER (WHERE source = 'reconcile') AS reconciled,"
                f" (SELECT coalesce(sum(value), 0) FROM {self.namespace}_counters"
                " WHERE name = 'rejected') AS rejected"
                f" FROM {self.namespace}"
            ).fetchone()
            return StoreStats(**{name: row[name] for name in row.keys()})  # noqa: SIM118

        return await self._read(work)

    async def note_rejected(self, count: int = 1) -> None:
        check_limit(count, name="count")
        await self._add_rejected(count)

    async def ready(self) -> None:
        # Adding 0 takes the write lock and commits: it fails on a read-only or broken file.
        await self._add_rejected(0)

    async def _add_rejected(self, count: int) -> None:
        table = self.namespace

        def work(connection: sqlite3.Connection) -> None:
            connection.execute(
                f"INSERT INTO {table}_counters (name, value) "  # noqa: S608 - checked
                "VALUES ('rejected', ?) "
                "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (count,),
            )

        await self._write(work)

    async def reset_for_retry(self, key: str, *, now: datetime, force: bool = False) -> bool:
        now = aware(now)
        stored = to_sqlite(key)

        def work(connection: sqlite3.Connection) -> bool:
            row = self._select(connection, stored)
            if row is None:
                raise UnknownCallbackError(key)
            if not resettable(
                row["state"],
                _dt(row["lease_expires_at"]),
                now,
                force=force,
                pruned=row["pruned_at"] is not None,
            ):
                return False
            self._update(
                connection,
                stored,
                state="received",
                # A forced re-run of a processed callback is one more attempt (as_reset).
                attempts=row["attempts"] if row["state"] == "processed" else 0,
                next_attempt_at=None,
                lease_expires_at=None,
                processed_at=None,
                lease_token=None,
                updated_at=_us(now),
                due_at=_us(now),
            )
            return True

        return await self._write(work)

    async def prune(
        self,
        *,
        before: datetime,
        now: datetime,
        states: Collection[State] = PRUNABLE_STATES,
        tombstones_before: datetime | None = None,
    ) -> Pruned:
        before, now, chosen, tombstones_before = check_prune(before, now, states, tombstones_before)
        before_us, now_us = to_us(before), to_us(now)
        horizon = None if tombstones_before is None else to_us(tombstones_before)
        table = self.namespace
        # Each walks its partial index over updated_at, so that it reads only the rows it
        # changes: its WHERE starts with the index's condition, as written there, and INDEXED
        # BY says so (without statistics, SQLite would rather read every finished row through
        # the index by state).
        tombstones = "pruned_at IS NOT NULL AND updated_at < ?"
        finished = (
            "pruned_at IS NULL AND (state = 'processed' OR state = 'dead')"
            f" AND updated_at < ? AND ({' OR '.join('state = ?' for _ in chosen)})"
        )
        remove = (
            f"DELETE FROM {table} INDEXED BY {table}_by_pruned"  # noqa: S608 - checked name
            f" WHERE {tombstones}"
        )
        prune = (
            f"UPDATE {table} INDEXED BY {table}_by_finished"  # noqa: S608 - checked name
            f" SET body = x'', headers = '{{}}', pruned_at = ? WHERE {finished}"
        )
        # The side bodies of the same rows go first (nothing in between changes which): a
        # tombstone's is normally gone already, unless an earlier version pruned it.
        unbody_removed = (
            f"DELETE FROM {table}_bodies WHERE key IN"  # noqa: S608 - checked name
            f" (SELECT key FROM {table} INDEXED BY {table}_by_pruned WHERE {tombstones})"
        )
        unbody_pruned = (
            f"DELETE FROM {table}_bodies WHERE key IN"  # noqa: S608 - checked name
            f" (SELECT key FROM {table} INDEXED BY {table}_by_finished WHERE {finished})"
        )

        def work(connection: sqlite3.Connection) -> Pruned:
            # Old tombstones go first, so that none made by this call is removed by it.
            removed = 0
            if horizon is not None:
                connection.execute(unbody_removed, (horizon,))
                removed = connection.execute(remove, (horizon,)).rowcount
            connection.execute(unbody_pruned, (before_us, *chosen))
            pruned = connection.execute(prune, (now_us, before_us, *chosen)).rowcount
            return Pruned(pruned=pruned, removed=removed)

        return await self._write(work)

    async def keep_rejected(self, requests: Sequence[RejectedRequest], *, keep: int) -> None:
        check_limit(keep, name="keep")
        rows = [
            (
                to_us(aware(request.received_at, name="received_at")),
                to_sqlite(request.reason),
                to_sqlite(request.path),
                json.dumps(dict(request.headers)),  # ASCII: any header text comes back exact
                sqlite3.Binary(request.body),
                request.body_bytes,
                _us(None if request.replayed_at is None else aware(request.replayed_at)),
                to_sqlite(request.replayed_key),
            )
            for request in requests
        ]
        table = f"{self.namespace}_rejected"

        def work(connection: sqlite3.Connection) -> None:
            # AUTOINCREMENT: an id is never given twice, even once the newest row is dropped.
            connection.executemany(
                f"INSERT INTO {table} ({_REJECTED_COLUMNS.removeprefix('id, ')})"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            connection.execute(
                f"DELETE FROM {table} WHERE id < (SELECT min(id) FROM"  # noqa: S608 - checked
                f" (SELECT id FROM {table} ORDER BY id DESC LIMIT ?))",
                (keep,),
            )

        await self._write(work)

    async def list_rejected(self, *, limit: int | None = None) -> list[RejectedRequest]:
        check_limit(limit)
        sql = (
            f"SELECT {_REJECTED_COLUMNS} FROM {self.namespace}_rejected"  # noqa: S608 - checked
            " ORDER BY id DESC LIMIT ?"
        )

        def work(connection: sqlite3.Connection) -> list[RejectedRequest]:
            if not self._keeps_rejected:
                return []
            rows = connection.execute(sql, (-1 if limit is None else limit,)).fetchall()
            return [_to_rejected(row) for row in rows]

        return await self._read(work)

    async def get_rejected(self, request_id: str) -> RejectedRequest | None:
        number = rejected_id(request_id)
        sql = (
            f"SELECT {_REJECTED_COLUMNS} FROM {self.namespace}_rejected"  # noqa: S608 - checked
            " WHERE id = ?"
        )

        def work(connection: sqlite3.Connection) -> RejectedRequest | None:
            if number is None or not self._keeps_rejected:
                return None
            row = connection.execute(sql, (number,)).fetchone()
            return None if row is None else _to_rejected(row)

        return await self._read(work)

    async def mark_replayed(self, request_id: str, *, key: str, now: datetime) -> bool:
        now_us = to_us(aware(now))
        number = rejected_id(request_id)
        sql = (
            f"UPDATE {self.namespace}_rejected SET replayed_at = ?, replayed_key = ?"  # noqa: S608
            " WHERE id = ?"
        )
        params = (now_us, to_sqlite(key), number)

        def work(connection: sqlite3.Connection) -> bool:
            return number is not None and connection.execute(sql, params).rowcount == 1

        return await self._write(work)

    async def close(self) -> None:
        """Commit every write already queued (the writer drains its queue), then close."""
        if self._closed:
            return
        self._closed = True  # new work is refused from now on
        await self._writer.close()

        def work() -> None:
            if self._read_connection is not None:
                self._read_connection.close()
                self._read_connection = None

        await asyncio.get_running_loop().run_in_executor(self._reader, work)
        self._reader.shutdown(wait=False)
