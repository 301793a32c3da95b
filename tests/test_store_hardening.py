"""Store hardening: odd strings kept as they are, reconnecting after a server restart, SQLite
files that cannot be used failing at once, and store URLs that never show their password.

Each test here failed before its fix (the shared suite in ``test_stores.py`` holds the rest).
"""

from __future__ import annotations

import asyncio
import os
import select
import sqlite3
import traceback
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from runflow_callbacks.errors import ConfigurationError, StoreError
from runflow_callbacks.stores import Admission, IncomingCallback, mask_url, open_store
from runflow_callbacks.stores.sqlite import SQLiteStore
from runflow_callbacks.testing import free_port
from servers import ServerUnavailable, postgres_cluster, redis_restartable, unavailable

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from servers import PostgresCluster, RedisServer

T0 = datetime(2026, 5, 6, 10, 0, 0, tzinfo=timezone.utc)
LEASE = timedelta(seconds=30)
# A busy database is waited on this long; nothing else may wait at all. The tests that open
# unusable files carry a timeout below it, so that waiting would fail them.
BUSY = timedelta(seconds=30)
NO_BUSY_WAIT = pytest.mark.timeout(20)


def incoming(key: str, *, event: str = "batch.succeeded") -> IncomingCallback:
    return IncomingCallback(
        key=key,
        kind="batch",
        subject_id="b1",
        event=event,
        body=b'{"event": "batch.succeeded"}',
        headers={"Runflow-Request-Id": "req-1"},
        secret_id="sec-1",
        secret_label="primary",
        request_id="req-1",
        received_at=T0,
    )


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception it was raised from or while handling."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _shown(error: BaseException) -> str:
    """Everything a log could show of ``error``: messages, reprs and the formatted traceback."""
    parts = [part for seen in _chain(error) for part in (str(seen), repr(seen))]
    return "\n".join([*parts, *traceback.format_exception(error)])


# --- 1. odd strings: plain text stays plain, so earlier rows read back unchanged --------------


async def test_sqlite_keeps_plain_text_as_text_and_only_a_surrogate_as_a_blob(
    tmp_path: Path,
) -> None:
    path = tmp_path / "callbacks.db"
    async with SQLiteStore(path, namespace="cb") as store:
        await store.record(incoming("plain \u2028 🎉 \x00 key"))
        await store.record(incoming("odd \udcff key"))
    with sqlite3.connect(path) as raw:
        rows = raw.execute("SELECT typeof(key), key, event FROM cb ORDER BY typeof(key)")
        assert list(rows) == [
            ("blob", "odd \udcff key".encode("utf-8", "surrogatepass"), "batch.succeeded"),
            ("text", "plain \u2028 🎉 \x00 key", "batch.succeeded"),
        ]


async def test_sqlite_reads_a_row_an_earlier_version_wrote_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "callbacks.db"
    async with SQLiteStore(path, namespace="cb") as store:
        await store.record(incoming("template"))
    with sqlite3.connect(path) as raw:
        raw.execute(
            "INSERT INTO cb (key, kind, subject_id, event, body, headers, secret_id,"
            " secret_label, request_id, received_at, source, state, attempts, deliveries,"
            " last_error, next_attempt_at, lease_expires_at, processed_at, updated_at,"
            " lease_token, due_at) SELECT 'earlier \\u0000 \ufdd0 key', kind, subject_id,"
            " 'evt \\x00', body, headers, secret_id, secret_label, request_id, received_at,"
            " source, state, attempts, deliveries, last_error, next_attempt_at,"
            " lease_expires_at, processed_at, updated_at, lease_token, due_at FROM cb"
        )
    async with SQLiteStore(path, namespace="cb") as store:
        record = await store.get("earlier \\u0000 \ufdd0 key")
    assert record is not None
    assert (record.key, record.event) == ("earlier \\u0000 \ufdd0 key", "evt \\x00")


@pytest.mark.postgres
async def test_postgres_keeps_plain_text_as_it_is_and_escapes_only_what_text_cannot_hold(
    postgres_url: str, namespace: str
) -> None:
    import psycopg

    async with open_store(postgres_url, namespace=namespace) as store:
        await store.record(incoming("plain \u2028 🎉 \\u0000 key"))
        await store.record(incoming("odd \udcff \x00 \\ key"))
        await store.record(incoming("\ufdd0 marked"))
    async with await psycopg.AsyncConnection.connect(postgres_url) as raw:
        cursor = await raw.execute(f"SELECT key FROM {namespace} ORDER BY key")  # noqa: S608 - a test's own table
        stored = sorted(row[0] for row in await cursor.fetchall())
    assert stored == sorted(
        [
            "plain \u2028 🎉 \\u0000 key",
            "\ufdd0odd \\udcff \\u0000 \\\\ key",
            "\ufdd0\ufdd0 marked",
        ]
    )


@pytest.mark.postgres
async def test_postgres_reads_rows_an_earlier_version_wrote_unchanged(
    postgres_url: str, namespace: str
) -> None:
    import psycopg

    earlier = ["earlier \\q key", "\\u0000 as typed", "\ufdd0 marked, not escaped \\q"]
    async with open_store(postgres_url, namespace=namespace) as store:
        await store.record(incoming("template"))
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as raw:
            for key in earlier:
                await raw.execute(
                    f"INSERT INTO {namespace} SELECT %s, kind, subject_id, %s, body, headers,"  # noqa: S608 - a test's own table
                    " secret_id, secret_label, request_id, received_at, source, state, attempts,"
                    " deliveries, last_error, next_attempt_at, lease_expires_at, processed_at,"
                    f" updated_at, lease_token, due_at FROM {namespace} WHERE key = 'template'",
                    (key, key),
                )
        listed = {record.key: record.event for record in await store.list_callbacks()}
        assert listed == {"template": "batch.succeeded", **{key: key for key in earlier}}
        # Found by key too, unless the key starts with the mark (no Runflow key does).
        for key in earlier[:2]:
            record = await store.get(key)
            assert record is not None
            assert (record.key, record.event) == (key, key)


@pytest.mark.redis
async def test_redis_keeps_plain_text_as_utf8(redis_url: str, namespace: str) -> None:
    import redis.asyncio as redis_asyncio

    async with open_store(redis_url, namespace=namespace) as store:
        await store.record(incoming("plain \u2028 🎉 \x00 key", event="evt \u2028"))
    raw = redis_asyncio.Redis.from_url(redis_url)
    try:
        event = await raw.hget(f"{namespace}:cb:plain \u2028 🎉 \x00 key", "event")
    finally:
        await raw.aclose()
    assert event == "evt \u2028".encode()


# --- 2. reconnecting after a server restart -------------------------------------------------


@pytest.fixture
def restartable_redis() -> Iterator[RedisServer]:
    """A private, durable Redis server the test may restart."""
    try:
        with redis_restartable() as server:
            yield server
    except ServerUnavailable as exc:
        unavailable("a private Redis server", str(exc))


@pytest.fixture(scope="module")
def _cluster() -> Iterator[PostgresCluster]:
    try:
        with postgres_cluster() as cluster:
            yield cluster
    except ServerUnavailable as exc:
        unavailable("a private PostgreSQL cluster", str(exc))


@pytest.fixture
def restartable_postgres(_cluster: PostgresCluster) -> PostgresCluster:
    """A private PostgreSQL cluster (shared by this module's tests) the test may restart."""
    _cluster.ensure_running()
    return _cluster


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def restartable(request: pytest.FixtureRequest) -> RedisServer | PostgresCluster:
    server: RedisServer | PostgresCluster = request.getfixturevalue(f"restartable_{request.param}")
    return server


def _no_liveness_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the stores send on a pooled connection without first checking that it is alive,
    so that a test reaches what happens when the server goes away under a request."""
    for backend in ("redis", "postgres"):
        monkeypatch.setattr(
            f"runflow_callbacks.stores.{backend}.readable_now", lambda fileno: False, raising=False
        )


async def test_after_a_server_restart_the_first_complete_and_record_and_claim_succeed(
    restartable: RedisServer | PostgresCluster, namespace: str
) -> None:
    async with open_store(restartable.url, namespace=namespace) as store:
        first = await store.record_and_claim(incoming("k1"), now=T0, lease=LEASE)
        assert first.token
        # Blocking: the event loop never sees the pooled connection close, as when a request
        # arrives just as the server comes back.
        restartable.restart()
        assert await store.complete("k1", first.token, now=T0)
        restartable.restart()
        second = await store.record_and_claim(incoming("k2"), now=T0, lease=LEASE)
        assert (second.inserted, second.acquired) == (True, True)
        restartable.restart()
        again = await store.record_and_claim(incoming("k1"), now=T0, lease=LEASE)
        assert again == Admission(inserted=False, state="processed", attempts=1)
        record = await store.get("k1")
    assert record is not None
    assert (record.state, record.deliveries, record.attempts) == ("processed", 2, 1)


async def test_after_a_server_restart_every_pooled_connection_is_replaced(
    restartable: RedisServer | PostgresCluster, namespace: str
) -> None:
    async with open_store(restartable.url, namespace=namespace) as store:
        admissions = await asyncio.gather(
            *(store.record_and_claim(incoming(f"k{i}"), now=T0, lease=LEASE) for i in range(6))
        )
        restartable.restart()
        done = await asyncio.gather(
            *(
                store.complete(f"k{i}", admission.token or "", now=T0)
                for i, admission in enumerate(admissions)
            )
        )
    assert done == [True] * 6


async def test_a_write_whose_answer_was_lost_is_not_retried_but_a_read_is(
    restartable: RedisServer | PostgresCluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_liveness_check(monkeypatch)
    async with open_store(restartable.url, namespace=namespace) as store:
        first = await store.record_and_claim(incoming("k1"), now=T0, lease=LEASE)
        assert first.token
        restartable.restart()
        # The request went out on the dead connection: whether it ran is unknown, so it is
        # not sent again (it did not run: the old server was gone).
        with pytest.raises(StoreError):
            await store.complete("k1", first.token, now=T0)
        assert (await store.stats()).received == 1  # on a fresh connection, pooled again
        restartable.restart()
        record = await store.get("k1")  # a read changes nothing: it is retried
        assert record is not None
        assert record.state == "processing"
        assert await store.complete("k1", first.token, now=T0)


@pytest.mark.postgres
async def test_postgres_retries_a_write_once_when_the_server_ended_the_idle_session_first(
    restartable_postgres: PostgresCluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_liveness_check(monkeypatch)
    url = f"{restartable_postgres.url}?options=-c%20idle_session_timeout%3D200"
    async with open_store(url, namespace=namespace) as store:
        first = await store.record_and_claim(incoming("k1"), now=T0, lease=LEASE)
        assert first.token
        [idle] = store._idle  # type: ignore[attr-defined] # the pooled connection
        for _ in range(200):  # until the server has ended it (at most 10 s)
            if select.select([idle.fileno()], [], [], 0)[0]:
                break
            await asyncio.sleep(0.05)
        # The server said it ended the session while idle (57P05): the statement never ran.
        assert await store.complete("k1", first.token, now=T0)


@pytest.mark.postgres
async def test_postgres_gives_up_after_one_retry(
    restartable_postgres: PostgresCluster, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_liveness_check(monkeypatch)
    async with open_store(restartable_postgres.url, namespace=namespace) as store:
        await store.record(incoming("k1"))
        connects: list[object] = []
        connect = store._connect  # type: ignore[attr-defined] # counting the connections made

        async def counting() -> Any:
            connects.append(None)
            return await connect()

        monkeypatch.setattr(store, "_connect", counting)
        restartable_postgres.stop()
        with pytest.raises(StoreError):
            await store.get("k1")
    assert len(connects) == 1  # the one retry, whose connection was refused


class _Sends:
    """Counts the sends of commands holding ``marker``; the first ``failures`` of them fail as
    a broken socket does (before anything reached the server)."""

    def __init__(self, marker: bytes, *, failures: int = 0) -> None:
        self.marker, self.failures, self.sends = marker, failures, 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from redis.asyncio.connection import AbstractConnection
        from redis.exceptions import ConnectionError as RedisConnectionError

        send = AbstractConnection.send_packed_command
        sends = self

        async def counted(
            self: AbstractConnection, command: Any, check_health: bool = True
        ) -> None:
            packed = command if isinstance(command, list | tuple) else [command]
            if any(sends.marker in part for part in packed if isinstance(part, bytes)):
                sends.sends += 1
                if sends.sends <= sends.failures:
                    await self.disconnect(nowait=True)
                    raise RedisConnectionError("Error 32 while writing to socket. Broken pipe.")
            await send(self, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)


@pytest.mark.redis
async def test_redis_retries_a_write_once_when_it_failed_while_sending(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_store(redis_url, namespace=namespace) as store:
        first = await store.record_and_claim(incoming("k1"), now=T0, lease=LEASE)
        assert first.token
        assert not await store.complete("k1", "stale", now=T0)  # Redis now knows the script
        sends = _Sends(b"EVALSHA", failures=1)
        sends.install(monkeypatch)
        assert await store.complete("k1", first.token, now=T0)
    assert sends.sends == 2


@pytest.mark.redis
async def test_redis_gives_up_after_one_retry(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_store(redis_url, namespace=namespace) as store:
        first = await store.record_and_claim(incoming("k1"), now=T0, lease=LEASE)
        assert first.token
        sends = _Sends(b"EVALSHA", failures=5)
        sends.install(monkeypatch)
        with pytest.raises(StoreError, match="Broken pipe"):
            await store.complete("k1", first.token, now=T0)
    assert sends.sends == 2


@pytest.mark.redis
async def test_redis_does_not_retry_an_error_the_server_answered(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_store(redis_url, namespace=namespace) as store:
        await store.note_rejected()  # a pooled connection
        client = store._client  # type: ignore[attr-defined] # to store a key of the wrong type
        await client.set(f"{namespace}:cb:k1", "not a hash")
        sends = _Sends(b"HGETALL")
        sends.install(monkeypatch)
        with pytest.raises(StoreError, match="WRONGTYPE"):
            await store.get("k1")
    assert sends.sends == 1


# --- 3. SQLite files that cannot be used fail at once -----------------------------------------


@NO_BUSY_WAIT
async def test_a_file_that_is_not_a_database_fails_at_once_with_a_one_line_message(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secret-dir" / "callbacks.db"
    path.parent.mkdir()
    path.write_bytes(b"not a database" * 100)
    store = SQLiteStore(path, busy_timeout=BUSY)
    for _ in range(2):  # the second request as well: nothing waits, nothing is kept half-open
        with pytest.raises(StoreError) as caught:
            await store.record_and_claim(incoming("k1"), now=T0, lease=LEASE)
        message = str(caught.value)
        assert "'callbacks.db' is not a SQLite database" in message
        assert "\n" not in message
        assert "secret-dir" not in _shown(caught.value)
    await store.close()
    assert path.read_bytes() == b"not a database" * 100


@NO_BUSY_WAIT
async def test_a_database_whose_journal_cannot_be_created_fails_at_once(tmp_path: Path) -> None:
    path = tmp_path / "callbacks.db"
    sqlite3.connect(path).close()  # an empty database in the rollback journal mode
    (tmp_path / "callbacks.db-wal").mkdir()  # where its write-ahead log would go
    async with SQLiteStore(path, busy_timeout=BUSY) as store:
        with pytest.raises(StoreError, match=r"SQLite store 'callbacks\.db'") as caught:
            await store.get("k1")
    assert "\n" not in str(caught.value)


@NO_BUSY_WAIT
async def test_a_read_only_store_reads_and_refuses_writes_at_once(tmp_path: Path) -> None:
    path = tmp_path / "callbacks.db"
    async with SQLiteStore(path) as store:
        first = await store.record_and_claim(incoming("k1"), now=T0, lease=LEASE)
        assert first.token
    async with SQLiteStore(path, read_only=True, busy_timeout=BUSY) as store:
        record = await store.get("k1")
        assert record is not None
        assert [r.key for r in await store.list_callbacks()] == ["k1"]
        assert (await store.stats()).received == 1
        with pytest.raises(StoreError, match=r"'callbacks\.db' is read-only") as caught:
            await store.complete("k1", first.token, now=T0)
        assert "\n" not in str(caught.value)
        with pytest.raises(StoreError, match="read-only"):
            await store.record_and_claim(incoming("k2"), now=T0, lease=LEASE)


@NO_BUSY_WAIT
async def test_a_missing_directory_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "callbacks.db"
    async with open_store(f"sqlite:///{path}") as store:
        with pytest.raises(StoreError, match="its directory does not exist") as caught:
            await store.record(incoming("k1"))
    assert str(tmp_path) not in _shown(caught.value)
    assert not path.parent.exists()


@pytest.mark.parametrize("read_only", [False, True])
async def test_without_create_a_missing_file_is_an_error_and_is_not_created(
    tmp_path: Path, *, read_only: bool
) -> None:
    path = tmp_path / "callbacks.db"
    store = (
        SQLiteStore(path, read_only=True)
        if read_only
        else open_store(f"sqlite:///{path}", create=False)
    )
    async with store:
        with pytest.raises(StoreError, match=r"the SQLite store 'callbacks\.db' does not exist"):
            await store.list_callbacks()
        with pytest.raises(StoreError, match="does not exist"):
            await store.stats()
    assert os.listdir(tmp_path) == []


async def test_without_create_an_existing_store_is_used_as_usual(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'callbacks.db'}"
    async with open_store(url) as store:
        await store.record(incoming("k1"))
    async with open_store(url, create=False) as store:
        first = await store.record_and_claim(incoming("k1"), now=T0, lease=LEASE)
        assert first.token
        assert await store.complete("k1", first.token, now=T0)
        assert [record.state for record in await store.list_callbacks()] == ["processed"]


# --- 4. store URLs never show their password --------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgres://app:s3%2Fcret@db/app", "postgres://app:***@db/app"),
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://user:s3cret@cache/1", "rediss://user:***@cache/1"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("postgresql://[::1]:5432/app", "postgresql://[::1]:5432/app"),
        ("sqlite:////var/lib/app/callbacks.db", "sqlite:////var/lib/app/callbacks.db"),
        ("memory://", "memory://"),
        (
            "postgresql://db/app?user=app&password=s3cret",
            "postgresql://db/app?user=app&password=***",
        ),
        # Unparsable, or read otherwise by the drivers: still masked.
        ("postgresql://user:s3cret@host:notaport/db", "postgresql://user:***@host:notaport/db"),
        ("redis://:s3cret@host:notaport/0", "redis://:***@host:notaport/0"),
        ("postgresql://user:s3cret@[::1/db", "postgresql://user:***@[::1/db"),
        ("postgresql://user:s3/cr?et@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user:p@ss@host/db", "postgresql://user:***@host/db"),
    ],
)
def test_mask_url_hides_the_password_and_nothing_else(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_mask_url_leaves_text_that_is_no_url_alone() -> None:
    assert mask_url("not a url") == "not a url"


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@host:notaport/0",
        "redis://:s3cret@[::1/0",
        "postgresql://user:s3cret@[::1/db",
        "postgresql://user:s3cret%ZZ@host/db",
        "postgresql://user:s3cret@host/db?bogus_option=1",
    ],
)
def test_a_malformed_store_url_is_refused_at_open_without_its_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store(url)
    assert "s3cret" not in _shown(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(
            "postgresql://user:s3cret@host:notaport/db?connect_timeout=2",
            marks=pytest.mark.postgres,
        ),
        pytest.param("postgresql://user:s3cret@host/db?sslmode=bogus", marks=pytest.mark.postgres),
        pytest.param("redis://:s3cret@host.invalid:6379/0", marks=pytest.mark.redis),
        pytest.param("rediss://:s3cret@host/0?ssl_cert_reqs=bogus", marks=pytest.mark.redis),
    ],
)
async def test_a_store_url_that_fails_at_first_use_does_not_show_its_password(url: str) -> None:
    async with open_store(url) as store:
        assert "s3cret" not in repr(store)
        with pytest.raises(StoreError) as caught:
            await store.get("x")
    assert "s3cret" not in _shown(caught.value)


@pytest.mark.redis
async def test_a_refused_redis_password_is_not_shown(redis_url: str) -> None:
    url = redis_url.replace("redis://", "redis://nobody:s3cret@")
    async with open_store(url) as store:
        with pytest.raises(StoreError) as caught:
            await store.get("x")
    assert "s3cret" not in _shown(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(
            f"postgresql://app:s3cret@127.0.0.1:{free_port()}/db", marks=pytest.mark.postgres
        ),
        pytest.param(f"redis://:s3cret@127.0.0.1:{free_port()}/0", marks=pytest.mark.redis),
    ],
)
async def test_a_store_shows_its_url_masked(url: str) -> None:
    async with open_store(url) as store:
        assert "s3cret" not in repr(store)
        assert mask_url(url) in repr(store)
