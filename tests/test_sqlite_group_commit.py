"""The SQLite store's group commit: shared commits, answers only after COMMIT, failures alone.

The shared suite (``test_stores.py``) and its model test check what every operation answers
and leaves behind; these tests check how the writer gets there: the writes of the callbacks in
flight share one transaction, nothing is answered before the COMMIT holding it returned, one
failing write fails alone, closing drains the queue, and several connections or processes on
one file stay exactly-once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from runflow_callbacks.errors import StoreError, UnknownCallbackError
from runflow_callbacks.stores import Admission, IncomingCallback, open_store
from runflow_callbacks.stores.sqlite import SQLiteStore

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

T0 = datetime(2026, 5, 6, 10, 0, 0, tzinfo=timezone.utc)
LEASE = timedelta(seconds=30)


def incoming(key: str) -> IncomingCallback:
    return IncomingCallback(
        key=key,
        kind="batch",
        subject_id="b1",
        event="batch.succeeded",
        body=b'{"event": "batch.succeeded"}',
        headers={"Runflow-Request-Id": "req-1"},
        secret_id="sec-1",
        secret_label="primary",
        request_id="req-1",
        received_at=T0,
    )


def committed_states(path: Path) -> dict[str, str]:
    """What another connection sees: only what was committed."""
    with sqlite3.connect(path) as raw:
        return dict(raw.execute("SELECT key, state FROM cb").fetchall())


async def test_the_writes_in_flight_together_share_one_commit(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "cb.db", namespace="cb") as store:
        keys = [f"k{index}" for index in range(16)]
        admissions = await asyncio.gather(
            *(store.record_and_claim(incoming(key), now=T0, lease=LEASE) for key in keys)
        )
        assert all(admission.acquired for admission in admissions)
        # Queued in one loop iteration, they were handed over together and committed together.
        assert (store._writer.groups, store._writer.operations) == (1, 16)
        done = await asyncio.gather(
            *(
                store.complete(key, admission.token, now=T0)
                for key, admission in zip(keys, admissions, strict=True)
                if admission.token
            )
        )
        assert all(done)
        assert (store._writer.groups, store._writer.operations) == (2, 32)
        assert set(committed_states(tmp_path / "cb.db").values()) == {"processed"}


async def test_an_answer_means_its_write_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "cb.db"
    async with SQLiteStore(path, namespace="cb") as store:
        # Every commit is fsynced: the writer's connection runs synchronous=FULL, in WAL.
        assert await store._write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 2
        assert await store._write(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == (
            "wal"
        )
        for index in range(5):
            key = f"k{index}"
            admission = await store.record_and_claim(incoming(key), now=T0, lease=LEASE)
            assert committed_states(path)[key] == "processing"  # visible to anyone: committed
            assert admission.token
            assert await store.complete(key, admission.token, now=T0)
            assert committed_states(path)[key] == "processed"


class _FailingCommit(sqlite3.Connection):
    """A connection whose next COMMIT fails as a disk error would (``fail_next`` times)."""

    fail_next = 0

    def commit(self) -> None:
        if _FailingCommit.fail_next:
            _FailingCommit.fail_next -= 1
            raise sqlite3.OperationalError("disk I/O error")
        super().commit()


async def test_a_failed_commit_answers_nothing_as_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real_connect(*args, **kwargs, factory=_FailingCommit)

    # The store's module calls sqlite3.connect: make its connections fail their next COMMIT.
    monkeypatch.setattr(sqlite3, "connect", connect)
    path = tmp_path / "cb.db"
    async with SQLiteStore(path, namespace="cb") as store:
        await store.ready()  # the schema exists; the next commit fails
        _FailingCommit.fail_next = 1
        results = await asyncio.gather(
            *(store.record_and_claim(incoming(f"k{i}"), now=T0, lease=LEASE) for i in range(4)),
            return_exceptions=True,
        )
        assert all(isinstance(result, StoreError) for result in results)
        assert "cannot read or write the SQLite store 'cb.db'" in str(results[0])
        assert committed_states(path) == {}  # rolled back: nothing was acknowledged
        # The connection is usable again: the same callbacks are recorded afresh.
        again = await asyncio.gather(
            *(store.record_and_claim(incoming(f"k{i}"), now=T0, lease=LEASE) for i in range(4))
        )
        assert all(admission.inserted and admission.acquired for admission in again)


def _count_reruns(store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every group the writer had to run again with savepoints."""
    reruns: list[int] = []
    careful = store._writer._careful

    def spy(connection: sqlite3.Connection, live: list[Any]) -> Any:
        reruns.append(len(live))
        return careful(connection, live)

    monkeypatch.setattr(store._writer, "_careful", spy)
    return reruns


async def test_one_failing_write_fails_alone_and_the_rest_of_its_group_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cb.db"

    def bad_sql(connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO no_such_table VALUES (1)")

    def writes_then_raises(connection: sqlite3.Connection) -> None:
        connection.execute(
            "UPDATE cb SET state = 'dead' WHERE key = 'k0'"  # must be undone
        )
        raise ValueError("a bug after a write")

    def ends_the_transaction(connection: sqlite3.Connection) -> None:
        connection.execute("ROLLBACK")  # as SQLite does by itself on some I/O errors
        raise sqlite3.OperationalError("disk I/O error")

    async with SQLiteStore(path, namespace="cb") as store:

        async def write(work: Callable[[sqlite3.Connection], None]) -> None:
            # A task, as the operations beside it: all of them queue in the same iteration.
            await store._write(work)

        first = await store.record_and_claim(incoming("k0"), now=T0, lease=LEASE)
        assert first.token
        groups = store._writer.groups
        reruns = _count_reruns(store, monkeypatch)
        results = await asyncio.gather(
            store.record_and_claim(incoming("k1"), now=T0, lease=LEASE),
            write(bad_sql),
            store.complete("unknown", "token", now=T0),
            write(writes_then_raises),
            store.record_and_claim(incoming("k2"), now=T0, lease=LEASE),
            write(ends_the_transaction),
            store.complete("k0", first.token, now=T0),
            return_exceptions=True,
        )
        assert store._writer.groups == groups + 1  # one group, committed once
        assert reruns == [7]  # run again with a savepoint per operation, once
        k1, bad, unknown, raised, k2, ended, completed = results
        assert isinstance(k1, Admission)
        assert k1.acquired
        assert isinstance(bad, StoreError)
        assert "no such table" in str(bad)
        assert isinstance(unknown, UnknownCallbackError)
        assert isinstance(raised, ValueError)
        assert isinstance(k2, Admission)
        assert k2.acquired
        assert isinstance(ended, StoreError)
        assert completed is True
    assert committed_states(path) == {"k0": "processed", "k1": "processing", "k2": "processing"}


async def test_an_unknown_key_alone_does_not_rerun_its_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStore(tmp_path / "cb.db", namespace="cb") as store:
        await store.ready()
        reruns = _count_reruns(store, monkeypatch)
        results = await asyncio.gather(
            store.record_and_claim(incoming("k1"), now=T0, lease=LEASE),
            store.complete("unknown", "token", now=T0),
            store.release("unknown", "token", now=T0),
            store.claim("unknown", now=T0, lease=LEASE),
            return_exceptions=True,
        )
        assert [type(result).__name__ for result in results] == [
            "Admission",
            "UnknownCallbackError",
            "UnknownCallbackError",
            "UnknownCallbackError",
        ]
        assert reruns == []  # it changed nothing, so nothing had to be rolled back


async def test_closing_commits_everything_already_queued(tmp_path: Path) -> None:
    path = tmp_path / "cb.db"
    store = SQLiteStore(path, namespace="cb")
    tasks = [
        asyncio.ensure_future(store.record_and_claim(incoming(f"k{i}"), now=T0, lease=None))
        for i in range(20)
    ]
    await asyncio.sleep(0)  # every task has queued its write; none is committed yet
    await store.close()
    assert all(task.done() for task in tasks)
    assert all(task.result().inserted for task in tasks)
    assert len(committed_states(path)) == 20
    with pytest.raises(RuntimeError, match="closed"):
        await store.record_and_claim(incoming("late"), now=T0, lease=None)
    with pytest.raises(RuntimeError, match="closed"):
        await store.get("k1")
    await store.close()  # twice is fine


async def test_a_store_closed_before_any_write_starts_no_thread(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "cb.db", namespace="cb")
    await store.close()
    assert store._writer._thread is None
    assert not (tmp_path / "cb.db").exists()


async def test_a_caller_cancelled_while_queued_leaves_the_others_alone(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "cb.db", namespace="cb") as store:
        tasks = [
            asyncio.ensure_future(store.record_and_claim(incoming(f"k{i}"), now=T0, lease=LEASE))
            for i in range(10)
        ]
        await asyncio.sleep(0)
        for task in tasks[::2]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(result, asyncio.CancelledError) for result in results[::2])
        assert all(not isinstance(r, BaseException) and r.acquired for r in results[1::2])
        stored = {record.key for record in await store.list_callbacks()}
        assert {f"k{i}" for i in range(1, 10, 2)} <= stored


@pytest.mark.timeout(60)
async def test_a_write_lock_held_elsewhere_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "cb.db"
    async with SQLiteStore(path, namespace="cb") as store:
        await store.ready()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's writer, mid-transaction
        waiting = asyncio.ensure_future(store.record_and_claim(incoming("k1"), now=T0, lease=LEASE))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # it cannot be: the lock is held
        # Reads use their own connection and never wait for the write lock.
        assert await store.get("k1") is None
        assert (await store.stats()).received == 0
        other.execute("COMMIT")
        other.close()
        assert (await waiting).acquired


@pytest.mark.timeout(60)
async def test_a_lock_held_past_busy_timeout_fails_that_group_only(tmp_path: Path) -> None:
    path = tmp_path / "cb.db"
    busy = timedelta(milliseconds=200)
    async with SQLiteStore(path, namespace="cb", busy_timeout=busy) as store:
        await store.ready()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="locked by another connection"):
            await store.record_and_claim(incoming("k1"), now=T0, lease=LEASE)
        other.execute("ROLLBACK")
        other.close()
        assert (await store.record_and_claim(incoming("k1"), now=T0, lease=LEASE)).acquired


async def _deliver_each(store: SQLiteStore, keys: list[str], rounds: int) -> int:
    """Deliver every key ``rounds`` times, concurrently; complete what this store won."""

    async def one(key: str) -> int:
        admission = await store.record_and_claim(incoming(key), now=T0, lease=LEASE)
        if admission.token is None:
            return 0
        assert await store.complete(key, admission.token, now=T0)
        return 1

    won = await asyncio.gather(*(one(key) for key in keys * rounds))
    return sum(won)


async def test_two_stores_on_one_file_hammering_the_same_keys_stay_exactly_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cb.db"
    keys = [f"k{index:02}" for index in range(30)]
    async with SQLiteStore(path, namespace="cb") as a, SQLiteStore(path, namespace="cb") as b:
        won = await asyncio.gather(_deliver_each(a, keys, 3), _deliver_each(b, keys, 3))
        assert sum(won) == len(keys)  # each key run once, by one of the two
        records = await a.list_callbacks()
        assert [record.key for record in records] == keys
        assert {(r.state, r.attempts, r.deliveries) for r in records} == {("processed", 1, 6)}
        stats = await b.stats()
        assert (stats.received, stats.duplicates, stats.processed) == (30, 150, 30)


_HAMMER = """
import asyncio, sys
from datetime import datetime, timedelta, timezone
from runflow_callbacks.stores import Admission, IncomingCallback, open_store

T0 = datetime(2026, 5, 6, 10, tzinfo=timezone.utc)

async def main() -> None:
    async with open_store(sys.argv[1], namespace="cb") as store:
        await store.ready()
        sys.stdin.readline()  # start together

        async def one(key: str) -> int:
            callback = IncomingCallback(
                key=key, kind="batch", subject_id="b1", event="batch.succeeded",
                body=b"{}", headers={}, secret_id=None, secret_label=None, request_id=None,
                received_at=T0,
            )
            admission = await store.record_and_claim(
                callback, now=T0, lease=timedelta(seconds=30)
            )
            if admission.token is None:
                return 0
            assert await store.complete(key, admission.token, now=T0)
            return 1

        keys = [f"k{index:02}" for index in range(40)]
        won = await asyncio.gather(*(one(key) for key in keys * 2))
        print(sum(won), flush=True)

asyncio.run(main())
"""


def test_processes_hammering_the_same_keys_stay_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    outputs = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert sum(int(out.strip()) for out, _ in outputs) == 40

    async def check() -> None:
        async with open_store(url, namespace="cb") as store:
            records = await store.list_callbacks()
            assert len(records) == 40
            assert {(r.state, r.attempts, r.deliveries) for r in records} == {("processed", 1, 6)}

    asyncio.run(check())


def test_one_store_serves_event_loops_in_several_threads(tmp_path: Path) -> None:
    # Each loop's operations are answered on that loop, whichever group they shared.
    store = SQLiteStore(tmp_path / "cb.db", namespace="cb")
    keys = [f"k{index:02}" for index in range(40)]
    won: list[int] = []

    def deliver() -> None:
        won.append(asyncio.run(_deliver_each(store, keys, 2)))

    threads = [threading.Thread(target=deliver) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sum(won) == len(keys)

    async def check() -> None:
        records = await store.list_callbacks()
        assert {(r.state, r.deliveries) for r in records} == {("processed", 6)}
        await store.close()

    asyncio.run(check())
