"""A SQLite file made before retention is upgraded in place on first use.

The earlier layout (no ``pruned_at`` column, no ``<namespace>_rejected`` table, no prune
indexes) is written here by hand, as that version's ``_prepare`` wrote it, with rows as its
statements wrote them. Opening it with the current store adds what is missing, once, however
many processes do so together; every row reads back as it was, not pruned, and the new
operations work on it. A read-only store reads such a file without changing it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from runflow_callbacks.stores import IncomingCallback, Pruned, RejectedRequest
from runflow_callbacks.stores._state import to_us
from runflow_callbacks.stores.sqlite import SQLiteStore

if TYPE_CHECKING:
    from pathlib import Path

T0 = datetime(2026, 5, 6, 10, 0, 0, 123456, tzinfo=timezone.utc)
LEASE = timedelta(seconds=30)
DAY = timedelta(days=1)
BODY = b'{"event": "batch.succeeded", "odd": "\xff\x00"}'
HEADERS = {"Runflow-Signature": "ab" * 32, "Runflow-Request-Id": "req-1"}

# The layout the previous version created (its _prepare, verbatim).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS cb (
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
    due_at INTEGER
);
CREATE INDEX IF NOT EXISTS cb_by_received ON cb (received_at, key);
CREATE INDEX IF NOT EXISTS cb_by_state ON cb (state, received_at);
CREATE INDEX IF NOT EXISTS cb_by_due ON cb (due_at, key)
    WHERE due_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS cb_counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
# The previous version's INSERT names its columns: it keeps working on the upgraded table.
OLD_INSERT = (
    "INSERT INTO cb (key, kind, subject_id, event, body, headers, secret_id, secret_label,"
    " request_id, received_at, source, state, attempts, deliveries, last_error,"
    " next_attempt_at, lease_expires_at, processed_at, updated_at, lease_token, due_at)"
    " VALUES (?, 'batch', 'b1', ?, ?, ?, 'sec-1', 'primary', 'req-1', ?, 'delivery', ?, ?,"
    " ?, ?, NULL, NULL, ?, ?, NULL, ?)"
)


def old_row(
    key: str,
    *,
    at: datetime,
    state: str,
    event: str = "batch.succeeded",
    attempts: int = 1,
    deliveries: int = 1,
    error: str | None = None,
) -> tuple[object, ...]:
    finished = state in {"processed", "dead"}
    return (
        key,
        event,
        BODY,
        json.dumps(HEADERS),
        to_us(at),
        state,
        attempts,
        deliveries,
        error,
        to_us(at) if state == "processed" else None,
        to_us(at),
        None if finished else to_us(at),
    )


def make_old_store(path: Path) -> None:
    """A file as the previous version left it: WAL, its tables, three callbacks, two rejected."""
    raw = sqlite3.connect(path, isolation_level=None)
    try:
        raw.execute("PRAGMA journal_mode = WAL")
        raw.executescript(OLD_SCHEMA)
        raw.executemany(
            OLD_INSERT,
            [
                old_row("done", at=T0, state="processed", deliveries=2),
                old_row("gone", at=T0, state="dead", attempts=3, error="boom"),
                old_row("waiting", at=T0 + DAY, state="received", event="batch.failed", attempts=0),
            ],
        )
        raw.execute("INSERT INTO cb_counters (name, value) VALUES ('rejected', 2)")
    finally:
        raw.close()


def columns(path: Path, table: str = "cb") -> list[str]:
    with sqlite3.connect(path) as raw:
        return [row[1] for row in raw.execute(f"PRAGMA table_info({table})")]


def tables_and_indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as raw:
        return {name for (name,) in raw.execute("SELECT name FROM sqlite_schema")}


def incoming(key: str, *, at: datetime) -> IncomingCallback:
    return IncomingCallback(
        key=key,
        kind="batch",
        subject_id="b1",
        event="batch.succeeded",
        body=BODY,
        headers=HEADERS,
        secret_id="sec-1",
        secret_label="primary",
        request_id="req-1",
        received_at=at,
    )


def rejected(number: int) -> RejectedRequest:
    body = b'{"n": %d}\xff' % number
    return RejectedRequest(
        received_at=T0 + timedelta(seconds=number),
        reason="signature_mismatch",
        path="/callbacks/runflow",
        headers={"runflow-signature": "cd" * 32, "x-odd": "caf\xe9"},
        body=body,
        body_bytes=len(body),
    )


async def test_an_old_store_reads_back_unchanged_and_not_pruned(tmp_path: Path) -> None:
    path = tmp_path / "cb.db"
    make_old_store(path)
    assert "pruned_at" not in columns(path)

    async with SQLiteStore(path, namespace="cb") as store:
        records = await store.list_callbacks()
        assert [record.key for record in records] == ["done", "gone", "waiting"]
        assert all(record.pruned_at is None and not record.pruned for record in records)
        done = await store.get("done")
        assert done is not None
        assert (done.body, dict(done.headers)) == (BODY, HEADERS)
        assert (done.state, done.attempts, done.deliveries, done.processed_at) == (
            "processed",
            1,
            2,
            T0,
        )
        gone = await store.get("gone")
        assert gone is not None
        assert (gone.state, gone.attempts, gone.last_error) == ("dead", 3, "boom")
        stats = await store.stats()
        assert (stats.received, stats.duplicates, stats.processed, stats.dead) == (3, 1, 1, 1)
        assert (stats.pending, stats.rejected) == (1, 2)

    assert columns(path)[-1] == "pruned_at"  # added at the end: no row was rewritten
    assert {"cb_rejected", "cb_by_finished", "cb_by_pruned"} <= tables_and_indexes(path)


async def test_the_new_operations_work_on_an_upgraded_store(tmp_path: Path) -> None:
    path = tmp_path / "cb.db"
    make_old_store(path)
    async with SQLiteStore(path, namespace="cb") as store:
        # Filters in SQL over the old rows.
        by_event = await store.list_callbacks(event="batch.failed")
        assert [record.key for record in by_event] == ["waiting"]
        since = await store.list_callbacks(since=T0 + DAY)
        assert [record.key for record in since] == ["waiting"]
        until = await store.list_callbacks(until=T0 + DAY, state="processed")
        assert [record.key for record in until] == ["done"]

        # A forced retry of an old processed row keeps its attempts.
        assert await store.reset_for_retry("done", now=T0 + DAY, force=True)
        [claim] = await store.claim_due(now=T0 + DAY, lease=LEASE, limit=1)  # due first (key)
        assert (claim.record.key, claim.record.attempts, claim.record.pruned_at) == (
            "done",
            2,
            None,
        )
        assert claim.token is not None
        assert await store.complete("done", claim.token, now=T0 + DAY)

        # Prune: the old dead row and the re-run processed one become tombstones.
        now = T0 + 10 * DAY
        assert await store.prune(before=now, now=now) == Pruned(pruned=2, removed=0)
        tombstone = await store.get("gone")
        assert tombstone is not None
        assert (tombstone.pruned_at, tombstone.body, dict(tombstone.headers)) == (now, b"", {})
        assert not await store.reset_for_retry("gone", now=now, force=True)
        duplicate = await store.record_and_claim(incoming("gone", at=now), now=now, lease=LEASE)
        assert (duplicate.inserted, duplicate.state, duplicate.token) == (False, "dead", None)
        later = now + 100 * DAY
        assert await store.prune(before=now, now=later, tombstones_before=later) == Pruned(0, 2)
        assert [record.key for record in await store.list_callbacks()] == ["waiting"]

        # Rejected requests, in their own table; the old rejected count is kept apart.
        await store.keep_rejected([rejected(1), rejected(2), rejected(3)], keep=2)
        kept = await store.list_rejected()
        assert [request.body for request in kept] == [rejected(3).body, rejected(2).body]
        newest = kept[0]
        assert newest.id is not None
        assert dict(newest.headers) == dict(rejected(3).headers)
        assert await store.mark_replayed(newest.id, key="k", now=later)
        marked = await store.get_rejected(newest.id)
        assert marked is not None
        assert (marked.replayed_at, marked.replayed_key) == (later, "k")
        assert (await store.stats()).rejected == 2


async def test_the_previous_version_keeps_writing_to_an_upgraded_store(tmp_path: Path) -> None:
    # During a rolling upgrade an old process writes beside a new one: its INSERT names its
    # columns, so its rows get pruned_at NULL and read back as not pruned.
    path = tmp_path / "cb.db"
    make_old_store(path)
    async with SQLiteStore(path, namespace="cb") as store:
        await store.ready()
        with sqlite3.connect(path) as raw:
            raw.execute(OLD_INSERT, old_row("from-old", at=T0 + 2 * DAY, state="processed"))
        record = await store.get("from-old")
        assert record is not None
        assert (record.state, record.pruned_at, record.body) == ("processed", None, BODY)
        assert await store.prune(before=T0 + 3 * DAY, now=T0 + 3 * DAY) == Pruned(3, 0)


async def test_stores_opening_an_old_file_together_upgrade_it_once(tmp_path: Path) -> None:
    path = tmp_path / "cb.db"
    make_old_store(path)
    stores = [SQLiteStore(path, namespace="cb") for _ in range(6)]
    try:
        # Each store's writer and reader thread opens its own connection: twelve at once.
        _, listed = await asyncio.gather(
            asyncio.gather(*(store.ready() for store in stores)),
            asyncio.gather(*(store.list_callbacks() for store in stores)),
        )
        assert [len(records) for records in listed] == [3] * len(stores)
    finally:
        for store in stores:
            await store.close()
    assert columns(path).count("pruned_at") == 1


_OPEN_OLD = """
import asyncio, sys
from runflow_callbacks.stores import open_store

async def main() -> None:
    sys.stdin.readline()  # start together
    async with open_store(sys.argv[1], namespace="cb") as store:
        await store.ready()
        records = await store.list_callbacks()
        assert all(record.pruned_at is None for record in records)
        print(len(records), len(await store.list_rejected()), flush=True)

asyncio.run(main())
"""


@pytest.mark.timeout(120)
def test_processes_opening_an_old_file_together_upgrade_it_once(tmp_path: Path) -> None:
    path = tmp_path / "cb.db"
    make_old_store(path)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_OLD, f"sqlite:///{path}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    outputs = [process.communicate(timeout=100) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert [out.split() for out, _ in outputs] == [["3", "0"]] * 4
    assert columns(path).count("pruned_at") == 1
    assert "cb_rejected" in tables_and_indexes(path)


async def test_a_read_only_store_reads_an_old_file_without_changing_it(tmp_path: Path) -> None:
    path = tmp_path / "cb.db"
    make_old_store(path)
    before = tables_and_indexes(path)
    async with SQLiteStore(path, namespace="cb", read_only=True) as store:
        records = await store.list_callbacks()
        assert [record.key for record in records] == ["done", "gone", "waiting"]
        assert all(record.pruned_at is None for record in records)
        record = await store.get("done")
        assert record is not None
        assert record.body == BODY
        assert await store.list_callbacks(event="batch.failed", since=T0) == [records[2]]
        assert await store.list_rejected() == []
        assert await store.get_rejected("1") is None
        assert (await store.stats()).received == 3
    assert "pruned_at" not in columns(path)
    assert tables_and_indexes(path) == before
