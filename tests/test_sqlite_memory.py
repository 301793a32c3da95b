"""SQLite keeps big bodies in a side table, written through a BLOB handle.

A body of ``_SIDE_BODY_BYTES`` or more (and an empty one) goes to ``<namespace>_bodies``, its
row's own ``body`` left empty, so that it is never bound as a parameter (which SQLite copies)
and no UPDATE of the row rebuilds it. These tests hold what that must not change: every body
comes back byte for byte on every read, a duplicate never changes it, rows an earlier version
wrote (body in the row) read as before, read-only stores create nothing, and prune leaves no
side body behind. (What it saves is measured by ``bench/bench_middleware.py --only memory``.)
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from runflow_callbacks.errors import StoreError
from runflow_callbacks.stores import IncomingCallback, Pruned
from runflow_callbacks.stores.sqlite import _BLOB_CHUNK, _SIDE_BODY_BYTES, SQLiteStore

if TYPE_CHECKING:
    from pathlib import Path

T0 = datetime(2026, 5, 6, 10, 0, 0, 123456, tzinfo=timezone.utc)
LEASE = timedelta(seconds=30)
DAY = timedelta(days=1)
SMALL = b'{"event": "batch.succeeded"}'
BIG = os.urandom(_SIDE_BODY_BYTES * 3 + 17)
BODIES = {
    "empty": b"",
    "one NUL": b"\x00",
    "every byte, inline": bytes(range(256)),
    "threshold": b"\xff" * _SIDE_BODY_BYTES,
    "just below": b"\x00\xff" * (_SIDE_BODY_BYTES // 2 - 1) + b"x",
    "random": BIG,
    "two chunks and a byte": os.urandom(2 * _BLOB_CHUNK + 1),
}


def incoming(key: str, body: bytes, *, source: str = "delivery") -> IncomingCallback:
    return IncomingCallback(
        key=key,
        kind="batch",
        subject_id="b1",
        event="batch.succeeded",
        body=body,
        headers={"Runflow-Request-Id": "req-1"},
        secret_id="sec-1",
        secret_label="primary",
        request_id="req-1",
        received_at=T0,
        source="delivery" if source == "delivery" else "reconcile",
    )


def side_keys(path: Path) -> list[str]:
    with sqlite3.connect(path) as raw:
        return [row[0] for row in raw.execute("SELECT key FROM cb_bodies ORDER BY key")]


def inline_body(path: Path, key: str) -> bytes:
    with sqlite3.connect(path) as raw:
        [(body,)] = raw.execute("SELECT body FROM cb WHERE key = ?", (key,)).fetchall()
    assert isinstance(body, bytes)
    return body


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
async def test_every_body_comes_back_exactly_from_every_read(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "callbacks.db"
    async with SQLiteStore(path, namespace="cb") as store:
        await store.record(incoming("recorded", body))
        await store.record_and_claim(incoming("claimed", body), now=T0, lease=LEASE)
        await store.record_and_claim(incoming("queued", body), now=T0, lease=None)
        # The writer's connection reads it (claim, claim_due), and so does the reader's.
        claim = await store.claim("recorded", now=T0, lease=LEASE)
        assert claim.token is not None
        assert claim.record.body == body
        [due] = await store.claim_due(now=T0, lease=LEASE, limit=10)
        assert (due.record.key, due.record.body) == ("queued", body)
        for key in ("recorded", "claimed", "queued"):
            record = await store.get(key)
            assert record is not None
            assert record.body == body
        assert [r.body for r in await store.list_callbacks()] == [body] * 3
        # Finishing a callback rewrites its row, never its body.
        assert await store.complete("recorded", claim.token, now=T0)
        assert await store.fail("queued", due.token or "", now=T0, error="x", retry_at=None)
        assert [r.body for r in await store.list_callbacks()] == [body] * 3
    aside = not body or len(body) >= _SIDE_BODY_BYTES
    assert side_keys(path) == (["claimed", "queued", "recorded"] if aside else [])
    for key in ("recorded", "claimed", "queued"):
        assert inline_body(path, key) == (b"" if aside else body)


@pytest.mark.parametrize("source", ["delivery", "reconcile"])
@pytest.mark.parametrize("first", [BIG, SMALL, b""], ids=["big", "small", "empty"])
async def test_a_duplicate_never_changes_the_first_body(
    tmp_path: Path, first: bytes, source: str
) -> None:
    path = tmp_path / "callbacks.db"
    async with SQLiteStore(path, namespace="cb") as store:
        await store.record(incoming("k1", first))
        await store.record_and_claim(incoming("k2", first), now=T0, lease=LEASE)
        for other in (BIG[::-1], SMALL + b" ", b""):
            recorded = await store.record(incoming("k1", other, source=source))
            assert not recorded.inserted
            assert recorded.record.body == first
            admitted = await store.record_and_claim(
                incoming("k2", other, source=source), now=T0, lease=LEASE
            )
            assert not admitted.inserted
        for key in ("k1", "k2"):
            record = await store.get(key)
            assert record is not None
            assert record.body == first
    aside = not first or len(first) >= _SIDE_BODY_BYTES
    assert side_keys(path) == (["k1", "k2"] if aside else [])


async def test_a_big_body_an_earlier_version_kept_in_its_row_still_reads_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "callbacks.db"
    async with SQLiteStore(path, namespace="cb") as store:
        await store.record(incoming("template", SMALL))
    with sqlite3.connect(path) as raw:  # as every version before the side table wrote it
        raw.execute(
            "INSERT INTO cb (key, kind, subject_id, event, body, headers, secret_id,"
            " secret_label, request_id, received_at, source, state, attempts, deliveries,"
            " last_error, next_attempt_at, lease_expires_at, processed_at, updated_at,"
            " lease_token, due_at) SELECT 'earlier', kind, subject_id, event, ?, headers,"
            " secret_id, secret_label, request_id, received_at, source, state, attempts,"
            " deliveries, last_error, next_attempt_at, lease_expires_at, processed_at,"
            " updated_at, lease_token, due_at FROM cb",
            (BIG,),
        )
    async with SQLiteStore(path, namespace="cb") as store:
        record = await store.get("earlier")
        assert record is not None
        assert record.body == BIG
        claim = await store.claim("earlier", now=T0, lease=LEASE)
        assert claim.record.body == BIG
        assert claim.token is not None
        assert await store.complete("earlier", claim.token, now=T0)
        assert await store.prune(before=T0 + DAY, now=T0 + DAY) == Pruned(pruned=1, removed=0)
        record = await store.get("earlier")
        assert record is not None
        assert record.body == b""
    assert side_keys(path) == []


async def test_read_only_on_a_file_without_the_side_table_creates_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "callbacks.db"
    async with SQLiteStore(path, namespace="cb") as store:
        await store.record(incoming("inline", SMALL))
    with sqlite3.connect(path) as raw:  # the file as an earlier version left it
        raw.execute("DROP TABLE cb_bodies")
        raw.execute("UPDATE cb SET body = ?", (BIG,))
    async with SQLiteStore(path, namespace="cb", read_only=True) as store:
        record = await store.get("inline")
        assert record is not None
        assert record.body == BIG
        assert [r.body for r in await store.list_callbacks()] == [BIG]
    with sqlite3.connect(path) as raw:
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    assert "cb_bodies" not in tables
    # Opened for writing, the file gains the side table, and its rows read as they were.
    async with SQLiteStore(path, namespace="cb") as store:
        await store.record(incoming("new", BIG[::-1]))
        assert [r.body for r in await store.list_callbacks()] == [BIG, BIG[::-1]]
    async with SQLiteStore(path, namespace="cb", read_only=True) as store:
        assert [r.body for r in await store.list_callbacks()] == [BIG, BIG[::-1]]


async def test_prune_and_removing_tombstones_leave_no_side_body(tmp_path: Path) -> None:
    path = tmp_path / "callbacks.db"
    async with SQLiteStore(path, namespace="cb") as store:
        for key in ("done", "kept", "waiting"):
            await store.record_and_claim(incoming(key, BIG), now=T0, lease=LEASE)
        for key in ("done", "kept"):
            claim = await store.claim(key, now=T0 + 2 * LEASE, lease=LEASE)
            assert claim.token is not None
            assert await store.complete(key, claim.token, now=T0 + 2 * LEASE)
        # Only "done" is old enough; "waiting" is not finished.
        pruned = await store.prune(before=T0 + DAY, now=T0 + DAY, states={"processed"})
        assert pruned == Pruned(pruned=2, removed=0)
        assert side_keys(path) == ["waiting"]
        for key in ("done", "kept"):
            record = await store.get(key)
            assert record is not None
            assert (record.body, record.pruned_at) == (b"", T0 + DAY)
        removed = await store.prune(
            before=T0 + DAY, now=T0 + 3 * DAY, tombstones_before=T0 + 2 * DAY
        )
        assert removed == Pruned(pruned=0, removed=2)
        assert await store.get("done") is None
        record = await store.get("waiting")
        assert record is not None
        assert record.body == BIG
    assert side_keys(path) == ["waiting"]


async def test_a_tombstone_an_earlier_version_pruned_reads_empty_and_loses_its_side_body(
    tmp_path: Path,
) -> None:
    path = tmp_path / "callbacks.db"
    async with SQLiteStore(path, namespace="cb") as store:
        await store.record(incoming("k1", BIG))
    with sqlite3.connect(path) as raw:  # an earlier version's prune knew no side table
        raw.execute(
            "UPDATE cb SET state = 'processed', body = x'', headers = '{}', pruned_at = ?",
            (int(T0.timestamp() * 1_000_000),),
        )
    async with SQLiteStore(path, namespace="cb") as store:
        record = await store.get("k1")
        assert record is not None
        assert (record.body, record.headers) == (b"", {})
        removed = await store.prune(before=T0, now=T0 + DAY, tombstones_before=T0 + DAY)
        assert removed == Pruned(pruned=0, removed=1)
    assert side_keys(path) == []


async def test_a_side_body_left_behind_gives_way_to_the_new_rows(tmp_path: Path) -> None:
    path = tmp_path / "callbacks.db"
    async with SQLiteStore(path, namespace="cb") as store:
        await store.record(incoming("k1", BIG))
    with sqlite3.connect(path) as raw:  # an earlier version removed the row, not its body
        raw.execute("DELETE FROM cb")
    async with SQLiteStore(path, namespace="cb") as store:
        for key, body in (("k1", b""), ("k1", BIG[::-1])):
            with sqlite3.connect(path) as raw:
                raw.execute("DELETE FROM cb")
            await store.record(incoming(key, body))
            record = await store.get(key)
            assert record is not None
            assert record.body == body
    assert side_keys(path) == ["k1"]


async def test_a_failing_write_in_a_group_leaves_no_side_body(tmp_path: Path) -> None:
    path = tmp_path / "callbacks.db"
    async with SQLiteStore(path, namespace="cb") as store:
        await store.ready()
        with sqlite3.connect(path) as raw:
            # Any further row fails (after its side body was written), the others commit.
            raw.execute(
                "CREATE TRIGGER no_bad BEFORE INSERT ON cb_bodies WHEN NEW.key = 'bad'"
                " BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        outcomes = await asyncio.gather(
            store.record(incoming("good", BIG)),
            store.record(incoming("bad", BIG)),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], StoreError)
        assert await store.get("bad") is None
        record = await store.get("good")
        assert record is not None
        assert record.body == BIG
    assert side_keys(path) == ["good"]
