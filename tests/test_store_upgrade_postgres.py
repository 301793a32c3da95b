"""Upgrading a PostgreSQL store an earlier version created, and what only PostgreSQL can get
wrong in the retention operations.

The earlier layout (no ``pruned_at``, no rejected requests' table, no retention indexes) is
written here by hand, as that version's ``_SCHEMA`` wrote it. The new code must complete it
in place on first use, also when several replicas start on it at once, and run no DDL once
the layout is complete (``ALTER TABLE`` locks the table even when it changes nothing).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from runflow_callbacks.stores import IncomingCallback, Pruned, RejectedRequest, open_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import psycopg

pytestmark = pytest.mark.postgres

T0 = datetime(2026, 5, 6, 10, 0, 0, 123456, tzinfo=timezone.utc)
DAY = timedelta(days=1)
LEASE = timedelta(seconds=30)
BODY = b'{"event": "batch.succeeded", "odd": "\xff\x00"}'
HEADERS = {"Runflow-Signature": "ab" * 32, "Runflow-Request-Id": "req-1"}
# What the previous version created on first use (its _SCHEMA, verbatim).
EARLIER_SCHEMA = """
CREATE TABLE IF NOT EXISTS {ns} (
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
    due_at timestamptz
);
CREATE INDEX IF NOT EXISTS {ns}_by_received ON {ns} (received_at, key);
CREATE INDEX IF NOT EXISTS {ns}_by_due ON {ns} (due_at, key) WHERE due_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {ns}_counters (name text PRIMARY KEY, value bigint NOT NULL);
"""
# How the previous version's record() wrote a row (its column list: no pruned_at).
EARLIER_INSERT = (
    "INSERT INTO {ns} (key, kind, subject_id, event, body, headers, secret_id, secret_label,"
    " request_id, received_at, source, state, attempts, deliveries, last_error,"
    " next_attempt_at, lease_expires_at, processed_at, updated_at, lease_token, due_at)"
    " VALUES (%(key)s, 'batch', 'b1', %(event)s, %(body)s, %(headers)s, 'sec-1', 'primary',"
    " 'req-1', %(at)s, 'delivery', %(state)s, %(attempts)s, 1, %(error)s, NULL, NULL,"
    " %(processed_at)s, %(at)s, NULL, %(due)s)"
)


def incoming(key: str, *, at: datetime = T0, event: str = "batch.succeeded") -> IncomingCallback:
    return IncomingCallback(
        key=key,
        kind="batch",
        subject_id="b1",
        event=event,
        body=BODY,
        headers=HEADERS,
        secret_id="sec-1",
        secret_label="primary",
        request_id="req-1",
        received_at=at,
    )


def rejected(number: int, **fields: Any) -> RejectedRequest:
    values: dict[str, Any] = {
        "received_at": T0 + timedelta(seconds=number),
        "reason": "signature_mismatch",
        "path": "/callbacks/runflow",
        "headers": {"runflow-request-id": f"req-{number}"},
        "body": b"\x00\xff body",
        "body_bytes": 7,
        **fields,
    }
    return RejectedRequest(**values)


@pytest.fixture
async def raw(postgres_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        yield conn


async def earlier_store(conn: psycopg.AsyncConnection[Any], ns: str) -> None:
    """The tables of the previous version, with a processed row and a failed one."""
    await conn.execute(EARLIER_SCHEMA.format(ns=ns))
    for key, state, attempts, error, due in (
        ("done", "processed", 1, None, None),
        ("broken", "failed", 2, "ValueError: boom", T0),
    ):
        await conn.execute(
            EARLIER_INSERT.format(ns=ns),
            {
                "key": key,
                "event": "batch.succeeded",
                "body": BODY,
                "headers": json.dumps(HEADERS),
                "at": T0,
                "state": state,
                "attempts": attempts,
                "error": error,
                "processed_at": T0 if state == "processed" else None,
                "due": due,
            },
        )
    await conn.execute(f"INSERT INTO {ns}_counters VALUES ('rejected', 3)")  # noqa: S608 - a test's own table


async def columns(conn: psycopg.AsyncConnection[Any], table: str) -> list[str]:
    cursor = await conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum",
        (table,),
    )
    return [row[0] for row in await cursor.fetchall()]


async def test_an_earlier_table_is_upgraded_in_place(
    postgres_url: str, namespace: str, raw: psycopg.AsyncConnection[Any]
) -> None:
    await earlier_store(raw, namespace)
    async with open_store(postgres_url, namespace=namespace) as store:
        done = await store.get("done")
        assert done is not None
        assert (done.state, done.attempts, done.pruned_at, done.pruned) == (
            "processed",
            1,
            None,
            False,
        )
        assert (done.body, dict(done.headers), done.processed_at) == (BODY, HEADERS, T0)
        assert [record.key for record in await store.list_callbacks()] == ["broken", "done"]
        assert all(record.pruned_at is None for record in await store.list_callbacks())
        stats = await store.stats()
        assert (stats.received, stats.processed, stats.failed, stats.rejected) == (2, 1, 1, 3)

        # The column is added last, as a new table has it: both layouts are the same.
        assert (await columns(raw, namespace))[-3:] == ["lease_token", "due_at", "pruned_at"]
        cursor = await raw.execute(
            "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL,"
            " to_regclass(%s) IS NOT NULL",
            (f"{namespace}_rejected", f"{namespace}_prunable", f"{namespace}_tombstones"),
        )
        assert await cursor.fetchone() == (True, True, True)

        # The new operations work on the upgraded table.
        assert await store.reset_for_retry("done", now=T0 + DAY, force=True)
        forced = await store.get("done")
        assert forced is not None
        assert (forced.state, forced.attempts, forced.processed_at) == ("received", 1, None)
        broken, claim = await store.claim_due(now=T0 + DAY, lease=LEASE, limit=5)
        assert (broken.record.key, broken.record.attempts) == ("broken", 3)  # due since T0
        assert (claim.record.key, claim.record.attempts) == ("done", 2)
        assert claim.token is not None
        assert await store.complete("done", claim.token, now=T0 + DAY)
        assert await store.prune(before=T0 + 2 * DAY, now=T0 + 3 * DAY) == Pruned(1, 0)
        tombstone = await store.get("done")
        assert tombstone is not None
        assert (tombstone.pruned_at, tombstone.body, dict(tombstone.headers)) == (
            T0 + 3 * DAY,
            b"",
            {},
        )
        again = await store.record_and_claim(
            incoming("done", at=T0 + 4 * DAY), now=T0 + 4 * DAY, lease=LEASE
        )
        assert (again.inserted, again.state, again.token) == (False, "processed", None)
        assert await store.list_callbacks(event="batch.succeeded", since=T0 + DAY) == []
        assert [r.key for r in await store.list_callbacks(event="batch.succeeded")] == [
            "broken",
            "done",
        ]

        await store.keep_rejected([rejected(1), rejected(2)], keep=5)
        newest, oldest = await store.list_rejected()
        assert oldest.id is not None
        assert (newest.headers, oldest.body) == ({"runflow-request-id": "req-2"}, b"\x00\xff body")
        assert await store.mark_replayed(oldest.id, key="done", now=T0 + DAY)
        assert await store.get_rejected(oldest.id) == rejected(
            1, id=oldest.id, replayed_at=T0 + DAY, replayed_key="done"
        )
        assert (await store.stats()).rejected == 3  # the counter, not the kept requests

    # A replica still on the previous version (a rolling deploy) writes as it did; its rows
    # read back as not pruned.
    await raw.execute(
        EARLIER_INSERT.format(ns=namespace),
        {
            "key": "late",
            "event": "batch.failed",
            "body": b"late",
            "at": T0 + DAY,
            "headers": "{}",
            "state": "received",
            "attempts": 0,
            "error": None,
            "processed_at": None,
            "due": T0 + DAY,
        },
    )
    async with open_store(postgres_url, namespace=namespace) as store:
        late = await store.get("late")
        assert late is not None
        assert (late.body, late.pruned_at) == (b"late", None)


@pytest.mark.timeout(120)
async def test_replicas_upgrading_together_all_succeed(
    postgres_url: str, raw: psycopg.AsyncConnection[Any]
) -> None:
    for round_ in range(5):
        namespace = f"u_{uuid.uuid4().hex[:16]}"
        if round_ % 2 == 0:  # an earlier table; otherwise none at all
            await earlier_store(raw, namespace)
        stores = [open_store(postgres_url, namespace=namespace) for _ in range(8)]
        try:
            firsts = await asyncio.gather(
                *(
                    store.record_and_claim(incoming(f"k{n}"), now=T0, lease=LEASE)
                    if n % 3 == 0
                    else store.keep_rejected([rejected(n)], keep=100)
                    if n % 3 == 1
                    else store.list_callbacks(event="batch.succeeded")
                    for n, store in enumerate(stores)
                ),
                return_exceptions=True,
            )
            assert [first for first in firsts if isinstance(first, BaseException)] == []
            assert len(await stores[0].list_rejected()) == 3
        finally:
            for store in stores:
                await store.close()
        assert (await columns(raw, namespace)).count("pruned_at") == 1


async def test_a_complete_layout_takes_no_lock_on_the_table(
    postgres_url: str, namespace: str, raw: psycopg.AsyncConnection[Any]
) -> None:
    import psycopg

    await earlier_store(raw, namespace)
    async with open_store(postgres_url, namespace=namespace) as store:
        await store.stats()  # upgrades it
    # Another session writing (ROW EXCLUSIVE, as every write) holds back any DDL on the table:
    # with lock_timeout, a store that ran some would fail at once.
    url = f"{postgres_url}?options=-c%20lock_timeout%3D1000"
    async with await psycopg.AsyncConnection.connect(postgres_url) as writer:
        await writer.execute(f"LOCK TABLE {namespace} IN ROW EXCLUSIVE MODE")
        await writer.execute(f"LOCK TABLE {namespace}_rejected IN ROW EXCLUSIVE MODE")
        async with open_store(url, namespace=namespace) as store:
            admission = await store.record_and_claim(incoming("new"), now=T0, lease=LEASE)
            assert admission.inserted
            assert len(await store.list_callbacks()) == 3
        await writer.rollback()


async def test_odd_text_round_trips_and_filters(postgres_url: str, namespace: str) -> None:
    odd_events = ["evt \x00 nul", "evt \udcff surrogate", "\ufdd0 marked", "back\\slash"]
    latin1 = "".join(map(chr, range(256)))
    async with open_store(postgres_url, namespace=namespace) as store:
        for number, event in enumerate(odd_events):
            await store.record(incoming(f"k{number}", event=event, at=T0 + number * DAY))
        await store.record(incoming("plain", at=T0 + 9 * DAY))
        for number, event in enumerate(odd_events):
            assert [r.key for r in await store.list_callbacks(event=event)] == [f"k{number}"]
            assert [r.event for r in await store.list_callbacks(event=event)] == [event]
        assert await store.list_callbacks(event="evt ") == []
        assert [r.key for r in await store.list_callbacks(since=T0 + DAY, until=T0 + 3 * DAY)] == [
            "k1",
            "k2",
        ]

        odd = rejected(
            1,
            reason="odd \x00 reason",
            path="/p\udcff\x00",
            headers={"x-latin1": latin1, "x-\x00name": "\x00"},
            body=bytes(range(256)),
            body_bytes=256,
        )
        await store.keep_rejected([odd], keep=1)
        [kept] = await store.list_rejected()
        assert kept.id is not None
        assert kept == rejected(1, **{**_fields(odd), "id": kept.id})
        assert await store.mark_replayed(kept.id, key="odd \x00 \udcff key", now=T0)
        marked = await store.get_rejected(kept.id)
        assert marked is not None
        assert marked.replayed_key == "odd \x00 \udcff key"


async def test_ids_that_were_never_given_are_unknown(postgres_url: str, namespace: str) -> None:
    async with open_store(postgres_url, namespace=namespace) as store:
        await store.keep_rejected([rejected(1)], keep=1)
        [kept] = await store.list_rejected()
        assert kept.id is not None
        assert await store.get_rejected(kept.id) == kept
        for bogus in (
            "",
            "0",
            "-1",
            f"0{kept.id}",
            f"{kept.id}.0",
            " 1",
            "\u0661",
            "9" * 30,
            "1e3",
        ):
            assert await store.get_rejected(bogus) is None
            assert not await store.mark_replayed(bogus, key="k", now=T0)


@pytest.mark.timeout(120)
async def test_replicas_keeping_together_never_keep_more(postgres_url: str, namespace: str) -> None:
    stores = [open_store(postgres_url, namespace=namespace) for _ in range(6)]
    try:
        await stores[0].stats()  # the layout first: this test is about the trim
        for _ in range(3):
            await asyncio.gather(
                *(
                    store.keep_rejected([rejected(n), rejected(n + 100)], keep=4)
                    for n, store in enumerate(stores)
                )
            )
            kept = await stores[0].list_rejected()
            assert len(kept) == 4
            ids = [int(request.id or 0) for request in kept]
            assert ids == sorted(ids, reverse=True)
    finally:
        for store in stores:
            await store.close()


async def test_prune_on_a_busy_table_changes_only_what_it_should(
    postgres_url: str, namespace: str
) -> None:
    async with open_store(postgres_url, namespace=namespace) as store:
        for number in range(40):
            at = T0 + number * timedelta(hours=1)
            admission = await store.record_and_claim(
                incoming(f"k{number:02}", at=at), now=at, lease=LEASE
            )
            assert admission.token is not None
            if number % 4 == 0:
                await store.fail(
                    f"k{number:02}", admission.token, now=at, error="E", retry_at=None, dead=True
                )
            elif number % 4 == 1:
                await store.fail(f"k{number:02}", admission.token, now=at, error="E", retry_at=at)
            elif number % 4 == 2:
                await store.complete(f"k{number:02}", admission.token, now=at)
        cut = T0 + 20 * timedelta(hours=1)
        # k00..k19: 5 dead and 5 processed become tombstones; failed and processing stay.
        assert await store.prune(before=cut, now=cut) == Pruned(10, 0)
        # The tombstones last updated before the horizon go; the newly pruned ones stay.
        result = await store.prune(
            before=T0 + 40 * timedelta(hours=1),
            now=cut,
            tombstones_before=T0 + 10 * timedelta(hours=1),
        )
        assert result == Pruned(10, 5)
        records = await store.list_callbacks()
        assert len(records) == 35
        assert {r.state for r in records if r.pruned} == {"processed", "dead"}
        assert all(r.body == BODY for r in records if not r.pruned)


def _fields(request: RejectedRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in request.__dataclass_fields__}
