"""The PostgreSQL store: several receiver replicas on several machines share one database.

Uses psycopg 3 (async) in autocommit mode; each operation is one statement, atomic on its own:
``INSERT ... ON CONFLICT`` records (a duplicate only bumps ``deliveries``; ``record_and_claim``
also takes the lease in that statement), a conditional ``UPDATE ... RETURNING`` claims
(PostgreSQL re-checks the condition after waiting for a concurrent writer's row lock, so
exactly one claimer wins), and ``claim_due`` takes due rows with ``FOR UPDATE SKIP LOCKED`` so
that workers on several replicas share the work without waiting on each other. The table
(named by ``namespace``) is created on first use, under an advisory lock so that replicas
starting together do not race; a table of an earlier version is completed there the same way
(``ADD COLUMN IF NOT EXISTS pruned_at``, the retention indexes, the rejected requests' table),
and once the layout is complete no DDL runs at all. Requires PostgreSQL 13 or newer.

Retention (``prune``) is one statement: a ``DELETE`` of old tombstones and an ``UPDATE`` that
empties the body and headers of old finished callbacks, each reading a partial index on
``updated_at`` (``<namespace>_prunable``, ``<namespace>_tombstones``), so its cost follows the
rows it changes, not the table. Kept rejected requests live in ``<namespace>_rejected`` (ids
from a ``bigint`` identity, never reused), written and trimmed to the newest ``keep`` in one
transaction under a lock of that table, so that replicas keeping requests together take turns.

The writes of every callback (``record_and_claim``, ``complete``, ``fail``, ``release``,
``renew``) are one statement each answering one row, and the ones in flight together are
batched (:mod:`~runflow_callbacks.stores._batch`): one batch is one psycopg pipeline ending in
a single Sync, so PostgreSQL runs it as one implicit transaction: one round trip and one commit
for all of them (see :meth:`PostgresStore._write_batch` for how one failing statement fails
only itself). A batch takes its row locks in key order, so concurrent batches (of this store,
or of other replicas) never deadlock. A lone write is sent as it always was, one autocommit
statement. :meth:`PostgresStore.record_with` (the hook of the procrastinate hand-off) is
the one exception: it records in a transaction of its own, shared with the caller's
statements, outside the batches.

Connections wait in a small pool between operations. A PostgreSQL restart (or an idle timeout,
or ``pg_terminate_backend``) ends them there; each is checked before a statement is written
to it and replaced when the server has ended it, so the first request after a restart
succeeds. A failure that still happens is retried once only when it certainly did not commit
(see :meth:`PostgresStore._on_connection`); a batch is retried, or not, as a whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final, TypeVar

from runflow_callbacks.errors import ConfigurationError, StoreError
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
    mask_url,
    rejected_id,
    scrub,
)
from runflow_callbacks.stores._batch import Batcher, Pending
from runflow_callbacks.stores._net import readable_now
from runflow_callbacks.stores._state import new_token, record_from_row
from runflow_callbacks.stores._text import from_postgres, to_postgres

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.pq import TransactionStatus
    from psycopg.rows import dict_row
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        "the PostgreSQL store needs psycopg 3: pip install 'runflow-callbacks[postgres]'"
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Sequence
    from datetime import timedelta

    from runflow_callbacks.stores import IncomingCallback, State

__all__ = ["PostgresStore"]

T = TypeVar("T")
Connection = psycopg.AsyncConnection[dict[str, Any]]
# The SQLSTATE of a session the server ended while it waited for the next statement
# (idle_session_timeout), so before it read ours.
_ENDED_WHILE_IDLE: Final = frozenset({"57P05"})

_COLUMNS: Final = (
    "key",
    "kind",
    "subject_id",
    "event",
    "body",
    "headers",
    "secret_id",
    "secret_label",
    "request_id",
    "received_at",
    "source",
    "state",
    "attempts",
    "deliveries",
    "last_error",
    "next_attempt_at",
    "lease_expires_at",
    "processed_at",
    "updated_at",
)
# Every column read back: the written ones and ``pruned_at``, added by ``prune`` (and to the
# tables of earlier versions by _create_schema: the last column of both layouts).
_FIELDS: Final = (*_COLUMNS, "pruned_at")
# The whole layout, every statement idempotent: run under the namespace's advisory lock, by the
# first replica that finds a part of it missing (see PostgresStore._create_schema). A table of
# an earlier version gains ``pruned_at`` (nullable, no default: a change of the catalog only),
# the retention indexes and the table of kept rejected requests.
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS {table} (
    key text PRIMARY KEY,
    kind text NOT NULL,
    subject_id text,
    event text,
    body bytea NOT NULL,
    headers text NOT NULL,
    secret_id text,
    secret_label text,
    request_id text,
    received_at timestamptz NOT NULL,
    source text NOT NULL,
    state text NOT NULL,
    attempts integer NOT NULL,
    deliveries integer NOT NULL,
    last_error text,
    next_attempt_at timestamptz,
    lease_expires_at timestamptz,
    processed_at timestamptz,
    updated_at timestamptz NOT NULL,
    lease_token text,
    due_at timestamptz,
    pruned_at timestamptz
);
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS pruned_at timestamptz;
CREATE INDEX IF NOT EXISTS {by_received} ON {table} (received_at, key);
CREATE INDEX IF NOT EXISTS {by_due} ON {table} (due_at, key) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS {prunable} ON {table} (updated_at)
    WHERE pruned_at IS NULL AND state IN ('processed', 'dead');
CREATE INDEX IF NOT EXISTS {tombstones} ON {table} (updated_at) WHERE pruned_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {counters} (name text PRIMARY KEY, value bigint NOT NULL);
CREATE TABLE IF NOT EXISTS {rejected} (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL,
    reason text NOT NULL,
    path text NOT NULL,
    headers text NOT NULL,
    body bytea NOT NULL,
    body_bytes bigint NOT NULL,
    replayed_at timestamptz,
    replayed_key text
);
"""
# Whether the whole layout is there already (the usual case): then no DDL runs at all, so no
# lock is taken on the table (ALTER TABLE takes an exclusive one even when it changes nothing).
_LAYOUT: Final = (
    "SELECT to_regclass(%(table)s) IS NOT NULL"
    " AND EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass(%(table)s)"
    " AND attname = 'pruned_at' AND NOT attisdropped)"
    " AND to_regclass(%(counters)s) IS NOT NULL AND to_regclass(%(rejected)s) IS NOT NULL"
    " AND to_regclass(%(by_received)s) IS NOT NULL AND to_regclass(%(by_due)s) IS NOT NULL"
    " AND to_regclass(%(prunable)s) IS NOT NULL AND to_regclass(%(tombstones)s) IS NOT NULL"
    " AS complete"
)
# What claim (and record_and_claim) may take: the rule of can_claim.
_CLAIMABLE: Final = (
    "(t.state IN ('received', 'failed', 'unhandled') OR (t.state = 'processing' "
    "AND (t.lease_expires_at IS NULL OR t.lease_expires_at <= %(now)s)))"
)
# What claim_due may take among due rows: never unhandled ones (they have no due time anyway).
_CLAIMABLE_WHEN_DUE: Final = (
    "(t.state IN ('received', 'failed') OR (t.state = 'processing' "
    "AND (t.lease_expires_at IS NULL OR t.lease_expires_at <= %(now)s)))"
)
# record_and_claim: a new key is inserted in its final state (received, or already leased); a
# duplicate is admitted by the DO UPDATE, whose expressions read the row as it was (``t``) and
# whose RETURNING reads it as it is after (and cannot see ``excluded``, hence the token
# parameter). {takes} is FALSE when recording only.
_ADMIT: Final = (
    "INSERT INTO {table} AS t ({columns}, lease_token, due_at) VALUES ("
    "%(key)s, %(kind)s, %(subject_id)s, %(event)s, %(body)s, %(headers)s, %(secret_id)s,"
    " %(secret_label)s, %(request_id)s, %(at)s, %(source)s, %(state)s, %(attempts)s,"
    " %(deliveries)s, NULL, NULL, %(expires)s, NULL, %(updated_at)s, %(token)s, %(due)s) "
    "ON CONFLICT (key) DO UPDATE SET deliveries = t.deliveries + excluded.deliveries,"
    " state = CASE WHEN {takes} THEN 'processing'"
    " WHEN t.state = 'unhandled' THEN 'received' ELSE t.state END,"
    " attempts = CASE WHEN {takes} THEN t.attempts + 1 ELSE t.attempts END,"
    " lease_token = CASE WHEN {takes} THEN excluded.lease_token ELSE t.lease_token END,"
    " lease_expires_at = CASE WHEN {takes} THEN excluded.lease_expires_at"
    " ELSE t.lease_expires_at END,"
    " due_at = CASE WHEN {takes} THEN excluded.lease_expires_at"
    " WHEN t.state = 'unhandled' THEN %(now)s ELSE t.due_at END,"
    " updated_at = CASE WHEN {takes} OR t.state = 'unhandled' THEN %(now)s"
    " WHEN excluded.deliveries > 0 THEN excluded.received_at ELSE t.updated_at END "
    "RETURNING (t.xmax = 0) AS inserted, t.state, t.attempts,"
    " coalesce(t.lease_token = %(token)s, false) AS acquired"
)
# complete, fail, renew and release: one conditional UPDATE, answering whether it applied and
# whether the key exists at all (both read the statement's one snapshot, so they agree even
# when ``prune`` deletes the row meanwhile): one row, so that the statement can join a batch.
_FINISH: Final = (
    "WITH done AS (UPDATE {table} SET {assignments} WHERE key = %(key)s"
    " AND state = 'processing' AND lease_token = %(token)s RETURNING key) "
    "SELECT EXISTS (SELECT FROM done) AS done,"
    " EXISTS (SELECT FROM {table} WHERE key = %(key)s) AS known"
)
_COMPLETE: Final = (
    "state = 'processed', processed_at = %(now)s, next_attempt_at = NULL, due_at = NULL,"
    " updated_at = %(now)s, lease_token = NULL, lease_expires_at = NULL"
)
_FAIL: Final = (
    "state = %(state)s, last_error = %(error)s, next_attempt_at = %(retry)s, due_at = %(due)s,"
    " updated_at = %(now)s, lease_token = NULL, lease_expires_at = NULL"
)
_RENEW: Final = "lease_expires_at = %(expires)s, due_at = %(expires)s, updated_at = %(now)s"
_RELEASE: Final = (
    "state = 'unhandled', attempts = greatest(attempts - 1, 0), lease_token = NULL,"
    " lease_expires_at = NULL, next_attempt_at = NULL, due_at = NULL, updated_at = %(now)s"
)
#: At most this many writes share one transaction: a burst is split rather than made to wait
#: behind one long batch.
MAX_BATCH: Final = 64

_TAKE: Final = (
    "state = 'processing', attempts = t.attempts + 1, lease_token = {token}, "
    "lease_expires_at = %(expires)s, due_at = %(expires)s, updated_at = %(now)s"
)


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(timezone.utc)


def _to_record(row: dict[str, Any]) -> StoredCallback:
    return record_from_row(row, _utc, from_postgres)


_REJECTED_FIELDS: Final = (
    "id, received_at, reason, path, headers, body, body_bytes, replayed_at, replayed_key"
)


def _to_rejected(row: dict[str, Any]) -> RejectedRequest:
    received_at = _utc(row["received_at"])
    assert received_at is not None
    reason, path = from_postgres(row["reason"]), from_postgres(row["path"])
    assert reason is not None
    assert path is not None
    return RejectedRequest(
        received_at=received_at,
        reason=reason,
        path=path,
        headers=json.loads(row["headers"]),
        body=bytes(row["body"]),
        body_bytes=int(row["body_bytes"]),
        id=str(row["id"]),
        replayed_at=_utc(row["replayed_at"]),
        replayed_key=from_postgres(row["replayed_key"]),
    )


def _text_params(incoming: IncomingCallback) -> dict[str, Any]:
    """The text columns of ``incoming``, as ``text`` can hold them (see ``_text``)."""
    return {
        "key": to_postgres(incoming.key),
        "kind": to_postgres(incoming.kind),
        "subject_id": to_postgres(incoming.subject_id),
        "event": to_postgres(incoming.event),
        "headers": json.dumps(dict(incoming.headers)),  # ASCII: odd characters are escaped
        "secret_id": to_postgres(incoming.secret_id),
        "secret_label": to_postgres(incoming.secret_label),
        "request_id": to_postgres(incoming.request_id),
    }


def _certainly_not_committed(error: BaseException, *, read_only: bool) -> bool:
    """Whether the try that failed with ``error`` (its connection broken) cannot have committed.

    Every operation is one statement in autocommit mode. A read commits nothing. psycopg
    raises ``InterfaceError`` before it sends anything. A session the server ended while idle
    never read the statement. Anything else may have failed after PostgreSQL committed the
    statement and before its answer arrived (a crash, a kill, a cut network, a shutdown that
    ends the session just after the commit): sending it again could, say, count a delivery
    twice, so the caller gets the error instead (Runflow delivers again later).
    """
    if read_only or isinstance(error, psycopg.InterfaceError):
        return True
    return isinstance(error, psycopg.OperationalError) and error.sqlstate in _ENDED_WHILE_IDLE


def _answered_by_server(connection: Connection) -> bool:
    """Whether ``connection`` is idle and well after a statement failed: the server answered
    it with an error and rolled its transaction back (nothing of it committed)."""
    return not connection.broken and connection.info.transaction_status == TransactionStatus.IDLE


def _admit_params(
    incoming: IncomingCallback, *, now: datetime, lease: timedelta | None, token: str | None
) -> dict[str, Any]:
    """The parameters of ``_ADMIT`` (record only when ``lease`` is None)."""
    received_at = aware(incoming.received_at, name="received_at")
    now = aware(now)
    expires = None if lease is None else now + lease
    return {
        **_text_params(incoming),
        "body": bytes(incoming.body),
        "at": received_at,
        "source": incoming.source,
        "state": "received" if lease is None else "processing",
        "attempts": 0 if lease is None else 1,
        "deliveries": 1 if incoming.source == "delivery" else 0,
        "expires": expires,
        "updated_at": received_at if lease is None else now,
        "token": token,
        "due": received_at if expires is None else expires,
        "now": now,
    }


@dataclass(frozen=True, slots=True)
class _Write:
    """One write a batch can hold: a statement answering one row, and the key it locks."""

    key: str
    query: bytes
    params: dict[str, Any]


def _ended_by_server(connection: Connection) -> bool:
    """Whether the server has ended the idle ``connection`` (see ``readable_now``)."""
    if connection.closed:
        return True
    try:
        return readable_now(connection.fileno())
    except (psycopg.Error, OSError, ValueError):
        return True


class PostgresStore(StoreBase):
    """A :class:`~runflow_callbacks.stores.CallbackStore` in PostgreSQL.

    ``url`` is any libpq URL (``postgresql://user:password@host:5432/db``); ``namespace`` is
    the table name (plus ``<namespace>_counters``). Up to ``max_connections`` connections are
    opened on demand and reused.
    """

    def __init__(
        self, url: str, *, namespace: str = DEFAULT_NAMESPACE, max_connections: int = 8
    ) -> None:
        self.namespace = check_namespace(namespace)
        check_limit(max_connections, name="max_connections")
        problem = None
        try:
            conninfo_to_dict(url)  # libpq's own parser, no I/O: a malformed URL fails here
        except psycopg.Error as exc:  # libpq echoes the URL: scrub() masks its password
            problem = scrub(str(exc).strip(), url)
        if problem is not None:  # raised outside the handler: no chained driver message
            raise ConfigurationError(f"invalid PostgreSQL store URL {mask_url(url)!r} ({problem})")
        self._url = url
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._closed = False
        self._table = sql.Identifier(self.namespace)
        self._columns = sql.SQL(", ").join(sql.Identifier(name) for name in _COLUMNS)
        self._fields = sql.SQL(", ").join(sql.Identifier(name) for name in _FIELDS)
        self._t_fields = sql.SQL(", ").join(sql.Identifier("t", name) for name in _FIELDS)
        self._rejected = sql.Identifier(f"{self.namespace}_rejected")
        # Rendered once: these are the statements of every delivery.
        self._admit_record = self._q(_ADMIT, takes=sql.SQL("FALSE")).as_bytes(None)
        self._admit_claim = self._q(_ADMIT, takes=sql.SQL(_CLAIMABLE)).as_bytes(None)
        self._complete, self._fail, self._renew, self._release = (
            self._q(_FINISH, assignments=sql.SQL(assignments)).as_bytes(None)
            for assignments in (_COMPLETE, _FAIL, _RENEW, _RELEASE)
        )
        # A batch waits for a connection slot before it takes the queue, so writes queued while
        # every connection is busy leave together on the next free one.
        self._batcher: Batcher[_Write] = Batcher(
            self._run_batch,
            max_batch=MAX_BATCH,
            max_in_flight=max_connections,
            acquire=lambda: self._slots,
        )

    def __repr__(self) -> str:
        return f"PostgresStore({mask_url(self._url)!r}, namespace={self.namespace!r})"

    # --- plumbing ----------------------------------------------------------------------

    async def _connect(self) -> Connection:
        options: dict[str, Any] = {}
        if "connect_timeout" not in self._url:
            options["connect_timeout"] = 10
        return await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, row_factory=dict_row, **options
        )

    async def _lend(self) -> tuple[Connection, bool]:
        """A connection to run one statement on, and whether it comes from the pool.

        A pooled connection the server has ended while it waited (a restart, an idle timeout)
        is closed before anything is written to it, and the next one tried.
        """
        while self._idle:
            connection = self._idle.pop()
            if not _ended_by_server(connection):
                return connection, True
            await self._discard(connection)
        return await self._connect(), False

    @staticmethod
    async def _discard(connection: Connection) -> None:
        with contextlib.suppress(psycopg.Error, OSError):
            await connection.close()

    async def _run(self, operation: Callable[[Connection], Awaitable[T]], *, read_only: bool) -> T:
        """Run ``operation`` (one statement) on a connection of the pool (see
        :meth:`_on_connection`)."""
        if self._closed:
            raise RuntimeError("this store is closed")
        async with self._slots:
            return await self._on_connection(operation, read_only=read_only)

    async def _on_connection(
        self, operation: Callable[[Connection], Awaitable[T]], *, read_only: bool
    ) -> T:
        """Run ``operation`` (one statement, or one batch) on a connection of the pool; the
        caller holds a slot.

        psycopg errors become :class:`StoreError` (without the URL's password). When the
        connection broke under a try and came from the pool (it had been idle, so the server
        may have ended it just now), the operation is retried once on a fresh connection if
        the failed try certainly did not commit (:func:`_certainly_not_committed`: ``read_only``
        operations, and failures before the statement reached the server). Nothing is retried
        twice, and nothing that failed on a fresh connection or on a working one (a constraint,
        a syntax error: the connection is still open).
        """
        failure: Exception | None = None
        for retry in (False, True):
            connection, reused = None, False
            try:
                connection, reused = await self._lend()
                if not self._ready:
                    await self._create_schema(connection)
                result = await operation(connection)
            except (psycopg.Error, OSError) as exc:
                broken = connection is None or connection.closed
                if connection is not None:
                    await self._discard(connection)
                if (
                    not retry
                    and reused
                    and broken
                    and _certainly_not_committed(exc, read_only=read_only)
                ):
                    continue
                failure = exc
                break
            except BaseException:
                if connection is not None:  # cancelled mid-statement: its state is unknown
                    await self._discard(connection)
                raise
            if connection.closed or self._closed:
                await self._discard(connection)
            else:
                self._idle.append(connection)
            return result
        assert failure is not None
        raise self._error(failure)

    def _error(self, failure: BaseException) -> StoreError:
        """The :class:`StoreError` a driver error becomes (raised outside the driver's handler,
        so that no driver message rides along as its context)."""
        text = " ".join(scrub(str(failure), self._url).split())  # libpq adds indented hints
        return StoreError(f"PostgreSQL store error: {type(failure).__name__}: {text}")

    # --- batched writes ----------------------------------------------------------------

    async def _write(self, key: str, query: bytes, params: dict[str, Any]) -> dict[str, Any]:
        """Run one write of a callback (a statement answering one row) in the next batch."""
        if self._closed:
            raise RuntimeError("this store is closed")
        row: dict[str, Any] = await self._batcher.call(_Write(to_postgres(key), query, params))
        return row

    async def _run_batch(self, batch: list[Pending[_Write]]) -> None:
        """Send ``batch`` (the batcher holds a slot) in one transaction, and again without a
        write that failed on its own (see :meth:`_write_batch`). Each pass is one try under
        :meth:`_on_connection`'s rules: retried once only when it certainly did not commit."""
        # Row locks are taken in key order, so two batches cannot wait for each other.
        batch.sort(key=lambda pending: pending.op.key)
        todo = batch
        while todo := [pending for pending in todo if not pending.settled]:
            try:
                again = await self._on_connection(
                    functools.partial(self._write_batch, writes=todo), read_only=False
                )
            except StoreError as exc:
                for pending in todo:
                    pending.fail(StoreError(str(exc)))
                return
            if not again:
                return

    async def _write_batch(self, connection: Connection, *, writes: list[Pending[_Write]]) -> bool:
        """Run ``writes`` in one transaction and answer each one once it committed; True when
        one of them failed on its own and the others must be sent again.

        One write alone is one autocommit statement, as always. Several are one pipeline with
        a single Sync: one implicit transaction. A statement that fails makes PostgreSQL roll
        the whole transaction back and skip the rest, so nothing of it committed: the first
        write without an answer is the one that failed. It gets its error, and the others go
        again in a new transaction (a pass per failing write at most), on another connection:
        psycopg takes a statement it prepares within a pipeline for prepared as it queues it,
        so after an aborted pipeline its cache may name statements the server never prepared.
        When the connection itself breaks, the error goes up to :meth:`_on_connection`, which
        decides for all of ``writes``. (In a pipeline, libpq reports a session the server
        ended while idle as a connection lost, without the SQLSTATE that says so: such a batch
        fails rather than being sent again. The liveness check before a connection is lent
        leaves that to a session ended in the instant between the check and the send.)
        """
        writes = [pending for pending in writes if not pending.settled]  # callers may be gone
        if not writes:
            return False
        if len(writes) == 1:
            [pending] = writes
            try:
                cursor = await connection.execute(pending.op.query, pending.op.params)
                row = await cursor.fetchone()
            except psycopg.Error as exc:
                if not _answered_by_server(connection):
                    raise
                pending.fail(self._error(exc))
                return False
            pending.resolve(row)
            return False
        cursors: list[psycopg.AsyncCursor[dict[str, Any]]] = []
        try:
            async with connection.pipeline():
                for pending in writes:
                    cursor = connection.cursor()
                    cursors.append(cursor)
                    await cursor.execute(pending.op.query, pending.op.params)
        except psycopg.Error as exc:
            failed = next((i for i, c in enumerate(cursors) if c.pgresult is None), None)
            if failed is None or not _answered_by_server(connection):
                raise  # not one statement's error (or the connection broke)
            writes[failed].fail(self._error(exc))
            await self._discard(connection)  # closed: not pooled again
            return True
        # Committed: every statement answered, and the Sync after them too.
        for pending, cursor in zip(writes, cursors, strict=True):
            pending.resolve(await cursor.fetchone())
        return False

    async def _create_schema(self, connection: Connection) -> None:
        """Create the tables and indexes, or complete those of an earlier version, once.

        Under the namespace's advisory lock (the one earlier versions create the table under),
        so replicas starting together take turns: the first finds a part missing and runs the
        idempotent ``_SCHEMA`` (``IF NOT EXISTS`` everywhere); the ones after it wait for its
        commit, then find the layout complete and run no DDL. Upgrading a big table of an
        earlier version builds its two retention indexes once, in that transaction: writes to
        the table wait for the build (reads do not).
        """
        async with self._ready_lock:
            if self._ready:
                return
            names = {
                name: f"{self.namespace}{suffix}"
                for name, suffix in (
                    ("table", ""),
                    ("by_received", "_by_received"),
                    ("by_due", "_by_due"),
                    ("prunable", "_prunable"),
                    ("tombstones", "_tombstones"),
                    ("counters", "_counters"),
                    ("rejected", "_rejected"),
                )
            }
            async with connection.transaction():
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (self.namespace,)
                )
                cursor = await connection.execute(_LAYOUT, names)
                row = await cursor.fetchone()
                if not (row and row["complete"]):
                    schema = sql.SQL(_SCHEMA).format(
                        **{name: sql.Identifier(value) for name, value in names.items()}
                    )
                    await connection.execute(schema)
            self._ready = True

    async def _fetch(
        self, query: sql.Composed, params: Any = None, *, read_only: bool = False
    ) -> list[dict[str, Any]]:
        async def fetch(connection: Connection) -> list[dict[str, Any]]:
            cursor = await connection.execute(query, params)
            return await cursor.fetchall() if cursor.description else []

        return await self._run(fetch, read_only=read_only)

    async def _rowcount(self, query: sql.Composed, params: Any) -> int:
        async def rowcount(connection: Connection) -> int:
            cursor = await connection.execute(query, params)
            return int(cursor.rowcount)

        return await self._run(rowcount, read_only=False)

    def _q(self, text: str, **parts: sql.Composable) -> sql.Composed:
        return sql.SQL(text).format(
            table=self._table,
            columns=self._columns,
            fields=self._fields,
            t_fields=self._t_fields,
            rejected=self._rejected,
            **parts,
        )

    async def _select(self, key: str) -> dict[str, Any] | None:
        rows = await self._fetch(
            self._q("SELECT {fields} FROM {table} WHERE key = %s"),
            (to_postgres(key),),
            read_only=True,
        )
        return rows[0] if rows else None

    async def _must_exist(self, key: str) -> None:
        if await self._select(key) is None:
            raise UnknownCallbackError(key)

    # --- the Protocol ------------------------------------------------------------------

    async def record(self, incoming: IncomingCallback) -> Recorded:
        received_at = aware(incoming.received_at, name="received_at")
        query = self._q(
            "INSERT INTO {table} AS t ({columns}, due_at) VALUES ("
            "%(key)s, %(kind)s, %(subject_id)s, %(event)s, %(body)s, %(headers)s, %(secret_id)s,"
            " %(secret_label)s, %(request_id)s, %(at)s, %(source)s, 'received', 0,"
            " %(deliveries)s, NULL, NULL, NULL, NULL, %(at)s, %(at)s) "
            "ON CONFLICT (key) DO UPDATE SET deliveries = t.deliveries + excluded.deliveries,"
            " updated_at = CASE WHEN excluded.deliveries > 0 THEN excluded.updated_at"
            " ELSE t.updated_at END "
            "RETURNING {t_fields}, (t.xmax = 0) AS inserted"
        )
        rows = await self._fetch(
            query,
            {
                **_text_params(incoming),
                "body": bytes(incoming.body),
                "at": received_at,
                "source": incoming.source,
                "deliveries": 1 if incoming.source == "delivery" else 0,
            },
        )
        return Recorded(_to_record(rows[0]), inserted=bool(rows[0]["inserted"]))

    async def record_and_claim(
        self, incoming: IncomingCallback, *, now: datetime, lease: timedelta | None
    ) -> Admission:
        lease = None if lease is None else check_lease(lease)
        token = None if lease is None else new_token()
        params = _admit_params(incoming, now=now, lease=lease, token=token)
        query = self._admit_record if lease is None else self._admit_claim
        row = await self._write(incoming.key, query, params)
        return Admission(
            inserted=bool(row["inserted"]),
            state=row["state"],
            attempts=row["attempts"],
            token=token if row["acquired"] else None,
        )

    async def record_with(
        self,
        incoming: IncomingCallback,
        *,
        now: datetime,
        in_transaction: Callable[[Connection, Admission], Awaitable[None]],
    ) -> Admission:
        """``record_and_claim(incoming, now=now, lease=None)``, and ``in_transaction`` in the
        same transaction, on the same connection: both commit, or neither does.

        ``in_transaction`` gets the connection (a psycopg ``AsyncConnection`` inside an open
        transaction: run statements on it, do not commit) and the admission the record
        statement answered; whatever it raises rolls the record back too and reaches the
        caller as it is (a psycopg error as :class:`StoreError`). The hook of the
        procrastinate hand-off, which defers its job there. Not batched: one transaction of
        its own per call, on a connection of the pool.
        """
        params = _admit_params(incoming, now=now, lease=None, token=None)

        async def admit(connection: Connection) -> Admission:
            async with connection.transaction():
                cursor = await connection.execute(self._admit_record, params)
                row = await cursor.fetchone()
                assert row is not None
                admission = Admission(
                    inserted=bool(row["inserted"]), state=row["state"], attempts=row["attempts"]
                )
                await in_transaction(connection, admission)
            return admission

        return await self._run(admit, read_only=False)

    async def claim(self, key: str, *, now: datetime, lease: timedelta) -> Claim:
        now, lease = aware(now), check_lease(lease)
        token = new_token()
        query = self._q(
            "UPDATE {table} AS t SET " + _TAKE + " WHERE t.key = %(key)s AND "  # noqa: S608 - constants; names go through sql.Identifier
            f"{_CLAIMABLE} RETURNING {{t_fields}}",
            token=sql.Placeholder("token"),
        )
        rows = await self._fetch(
            query, {"key": to_postgres(key), "now": now, "expires": now + lease, "token": token}
        )
        if rows:
            return Claim(_to_record(rows[0]), token)
        row = await self._select(key)
        if row is None:
            raise UnknownCallbackError(key)
        return Claim(_to_record(row))

    async def _finish(self, key: str, token: str, query: bytes, params: dict[str, Any]) -> bool:
        row = await self._write(key, query, {**params, "key": to_postgres(key), "token": token})
        if not row["known"]:
            raise UnknownCallbackError(key)
        return bool(row["done"])

    async def renew(self, key: str, token: str, *, now: datetime, lease: timedelta) -> bool:
        now, lease = aware(now), check_lease(lease)
        return await self._finish(key, token, self._renew, {"now": now, "expires": now + lease})

    async def complete(self, key: str, token: str, *, now: datetime) -> bool:
        return await self._finish(key, token, self._complete, {"now": aware(now)})

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
        now = aware(now)
        retry = None if retry_at is None or dead else aware(retry_at, name="retry_at")
        return await self._finish(
            key,
            token,
            self._fail,
            {
                "state": "dead" if dead else "failed",
                "error": to_postgres(error),
                "retry": retry,
                "due": None if dead else (retry or now),
                "now": now,
            },
        )

    async def release(self, key: str, token: str, *, now: datetime) -> bool:
        return await self._finish(key, token, self._release, {"now": aware(now)})

    async def claim_due(self, *, now: datetime, lease: timedelta, limit: int) -> list[Claim]:
        now, lease = aware(now), check_lease(lease)
        check_limit(limit)
        query = self._q(
            "WITH due AS (SELECT key, due_at FROM {table} WHERE due_at IS NOT NULL"  # noqa: S608 - constants; names go through sql.Identifier
            " AND due_at <= %(now)s ORDER BY due_at, key LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
            "UPDATE {table} AS t SET " + _TAKE + " FROM due WHERE t.key = due.key"
            f" AND {_CLAIMABLE_WHEN_DUE} RETURNING {{t_fields}}, t.lease_token,"
            " due.due_at AS was_due",
            token=sql.SQL("gen_random_uuid()::text"),
        )
        rows = await self._fetch(query, {"now": now, "expires": now + lease, "limit": limit})
        rows.sort(key=lambda row: (row["was_due"], row["key"]))
        return [Claim(_to_record(row), row["lease_token"]) for row in rows]

    async def get(self, key: str) -> StoredCallback | None:
        row = await self._select(key)
        return None if row is None else _to_record(row)

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
        # Only the filters given are written, so that a time window reads a range of the
        # received-order index. The stored event is escaped (``_text``): so is the one asked for.
        filters = [
            sql.SQL(condition)
            for condition, value in (
                ("state = %(state)s", state),
                ("event = %(event)s", event),
                ("received_at >= %(since)s", since),
                ("received_at < %(until)s", until),
            )
            if value is not None
        ]
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(filters) if filters else sql.SQL("")
        query = self._q(
            "SELECT {fields} FROM {table}{where} ORDER BY received_at, key LIMIT %(limit)s",
            where=where,
        )
        params = {
            "state": state,
            "event": to_postgres(event),
            "since": since,
            "until": until,
            "limit": limit,
        }
        rows = await self._fetch(query, params, read_only=True)
        return [_to_record(row) for row in rows]

    async def stats(self) -> StoreStats:
        query = self._q(
            "SELECT count(*) AS received,"
            " coalesce(sum(greatest(deliveries - 1, 0)), 0) AS duplicates,"
            " count(*) FILTER (WHERE state = 'received') AS pending,"
            " count(*) FILTER (WHERE state = 'processing') AS processing,"
            " count(*) FILTER (WHERE state = 'processed') AS processed,"
            " count(*) FILTER (WHERE state = 'failed') AS failed,"
            " count(*) FILTER (WHERE state = 'dead') AS dead,"
            " count(*) FILTER (WHERE state = 'unhandled') AS unhandled,"
            " count(*) FILTER (WHERE source = 'reconcile') AS reconciled,"
            " (SELECT coalesce(sum(value), 0) FROM {counters} WHERE name = 'rejected')"
            " AS rejected FROM {table}",
            counters=sql.Identifier(f"{self.namespace}_counters"),
        )
        [row] = await self._fetch(query, read_only=True)
        return StoreStats(**{name: int(value) for name, value in row.items()})

    async def note_rejected(self, count: int = 1) -> None:
        check_limit(count, name="count")
        await self._add_rejected(count)

    async def ready(self) -> None:
        # Adding 0 is a write: a standby or a read-only database refuses it.
        await self._add_rejected(0)

    async def _add_rejected(self, count: int) -> None:
        query = self._q(
            "INSERT INTO {counters} AS c (name, value) VALUES ('rejected', %s)"
            " ON CONFLICT (name) DO UPDATE SET value = c.value + excluded.value",
            counters=sql.Identifier(f"{self.namespace}_counters"),
        )
        await self._rowcount(query, (count,))

    async def reset_for_retry(self, key: str, *, now: datetime, force: bool = False) -> bool:
        # The rule of resettable(): never a tombstone or a live lease, a processed callback
        # only when forced (and then its attempts are kept: the re-run is one more).
        query = self._q(
            "UPDATE {table} SET state = 'received',"
            " attempts = CASE WHEN state = 'processed' THEN attempts ELSE 0 END,"
            " next_attempt_at = NULL, lease_expires_at = NULL, lease_token = NULL,"
            " processed_at = NULL, due_at = %(now)s, updated_at = %(now)s"
            " WHERE key = %(key)s AND pruned_at IS NULL AND (state <> 'processed' OR %(force)s)"
            " AND (state <> 'processing' OR lease_expires_at IS NULL"
            " OR lease_expires_at <= %(now)s)"
        )
        params = {"key": to_postgres(key), "now": aware(now), "force": bool(force)}
        if await self._rowcount(query, params) == 1:
            return True
        await self._must_exist(key)
        return False

    async def prune(
        self,
        *,
        before: datetime,
        now: datetime,
        states: Collection[State] = PRUNABLE_STATES,
        tombstones_before: datetime | None = None,
    ) -> Pruned:
        before, now, states, tombstones_before = check_prune(before, now, states, tombstones_before)
        chosen = list(states)
        # One statement, so one snapshot: the DELETE sees only the tombstones made before this
        # call, never the ones its UPDATE makes (the two take disjoint rows). Each reads its
        # own partial index (the literal state list lets the planner match _prunable's).
        query = self._q(
            "WITH removed AS (DELETE FROM {table} WHERE pruned_at IS NOT NULL"
            " AND updated_at < %(tombstones_before)s RETURNING 1),"
            " pruned AS (UPDATE {table} SET body = ''::bytea, headers = '{{}}',"
            " pruned_at = %(now)s WHERE pruned_at IS NULL AND state IN ('processed', 'dead')"
            " AND state = ANY(%(states)s) AND updated_at < %(before)s RETURNING 1) "
            "SELECT (SELECT count(*) FROM pruned) AS pruned,"
            " (SELECT count(*) FROM removed) AS removed"
        )
        [row] = await self._fetch(
            query,
            {
                "tombstones_before": tombstones_before,
                "now": now,
                "states": chosen,
                "before": before,
            },
        )
        return Pruned(pruned=int(row["pruned"]), removed=int(row["removed"]))

    # --- kept rejected requests --------------------------------------------------------

    async def keep_rejected(self, requests: Sequence[RejectedRequest], *, keep: int) -> None:
        check_limit(keep, name="keep")
        # Only the newest ``keep`` can survive the trim: the others are never written (their
        # ids would never be seen). Ids come from the identity, so they are never reused.
        kept = list(requests)[-keep:]
        rows = [
            (
                aware(request.received_at, name="received_at"),
                to_postgres(request.reason),
                to_postgres(request.path),
                json.dumps(dict(request.headers)),  # ASCII: NUL and any latin-1 text escaped
                bytes(request.body),
                request.body_bytes,
                None if request.replayed_at is None else aware(request.replayed_at),
                to_postgres(request.replayed_key),
            )
            for request in kept
        ]
        insert = self._q(
            "INSERT INTO {rejected} (received_at, reason, path, headers, body, body_bytes,"
            " replayed_at, replayed_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
        )
        trim = self._q(
            "DELETE FROM {rejected} WHERE id <= (SELECT id FROM {rejected}"
            " ORDER BY id DESC OFFSET %s LIMIT 1)"
        )

        async def write(connection: Connection) -> None:
            # The lock makes concurrent calls (of several replicas) take turns, so that each
            # trim sees every row kept before it: never more than ``keep`` stay.
            async with connection.transaction():
                await connection.execute(self._q("LOCK TABLE {rejected} IN EXCLUSIVE MODE"))
                if rows:
                    async with connection.cursor() as cursor:
                        await cursor.executemany(insert, rows)
                await connection.execute(trim, (keep,))

        await self._run(write, read_only=False)

    async def list_rejected(self, *, limit: int | None = None) -> list[RejectedRequest]:
        check_limit(limit)
        rows = await self._fetch(
            self._q(
                "SELECT {rejected_fields} FROM {rejected} ORDER BY id DESC LIMIT %s",
                rejected_fields=sql.SQL(_REJECTED_FIELDS),
            ),
            (limit,),
            read_only=True,
        )
        return [_to_rejected(row) for row in rows]

    async def get_rejected(self, request_id: str) -> RejectedRequest | None:
        number = rejected_id(request_id)
        if number is None:
            return None
        rows = await self._fetch(
            self._q(
                "SELECT {rejected_fields} FROM {rejected} WHERE id = %s",
                rejected_fields=sql.SQL(_REJECTED_FIELDS),
            ),
            (number,),
            read_only=True,
        )
        return _to_rejected(rows[0]) if rows else None

    async def mark_replayed(self, request_id: str, *, key: str, now: datetime) -> bool:
        now = aware(now)
        number = rejected_id(request_id)
        if number is None:
            return False
        query = self._q("UPDATE {rejected} SET replayed_at = %s, replayed_key = %s WHERE id = %s")
        return await self._rowcount(query, (now, to_postgres(key), number)) == 1

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._batcher.drain()  # writes already queued are answered first
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()
