"""A Redis keyspace written by the previous version keeps working, and retention scales.

The previous layout is written here by hand, as the earlier scripts left it: callback hashes
without ``pruned_at``, the ``order``/``due`` indexes and the counters, and no rejected-request
keys. The new code reads it as it is (nothing to migrate, so replicas opening it at once cannot
trip over each other), and every new operation works on it. The rest checks what only a big
keyspace shows: ``prune`` walks it in short scripts, replicas pruning it at once prune and
remove each callback exactly once, and a time window lists it page by page as memory does.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from runflow_callbacks.stores import IncomingCallback, Pruned, RejectedRequest, open_store
from runflow_callbacks.stores._state import to_us
from runflow_callbacks.stores.memory import MemoryStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.redis

T0 = datetime(2026, 5, 6, 10, 0, 0, 123456, tzinfo=timezone.utc)
DAY = timedelta(days=1)
LEASE = timedelta(seconds=30)
BODY = b'{"event": "batch.succeeded", "odd": "\xff\x00"}'
HEADERS = {"Runflow-Signature": "ab" * 32, "Runflow-Request-Id": "req-1"}


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Any]:
    """A plain redis-py client: what writes the old layout and looks at the keys."""
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def write_old_callback(
    raw: Any, namespace: str, key: str, *, state: str, at: datetime, **extra: object
) -> None:
    """One callback as the previous version's scripts left it (no ``pruned_at``)."""
    fields: dict[str, object] = {
        "state": state,
        "attempts": 1 if state != "received" else 0,
        "deliveries": 2,
        "received_at": to_us(at),
        "updated_at": to_us(at),
        "source": "delivery",
        "body": BODY,
        "headers": json.dumps(HEADERS),
        "kind": "batch",
        "subject_id": "b1",
        "event": "batch.failed" if state == "failed" else "batch.succeeded",
        "secret_id": "sec-1",
        "secret_label": "primary",
        "request_id": "req-1",
        **extra,
    }
    await raw.hset(f"{namespace}:cb:{key}", mapping=fields)
    await raw.zadd(f"{namespace}:order", {key: to_us(at)})
    if state in {"received", "failed"}:
        await raw.zadd(f"{namespace}:due", {key: to_us(at)})
    stats = f"{namespace}:stats"
    await raw.hincrby(stats, "received", 1)
    await raw.hincrby(stats, "duplicates", 1)
    await raw.hincrby(stats, f"state:{state}", 1)


async def write_old_keyspace(raw: Any, namespace: str) -> None:
    await write_old_callback(
        raw, namespace, "old-processed", state="processed", at=T0, processed_at=to_us(T0)
    )
    await write_old_callback(raw, namespace, "old-dead", state="dead", at=T0, last_error="boom")
    await write_old_callback(
        raw, namespace, "old-failed", state="failed", at=T0 + DAY, last_error="E"
    )
    await write_old_callback(raw, namespace, "old-received", state="received", at=T0 + 2 * DAY)
    await raw.hincrby(f"{namespace}:stats", "rejected", 7)


def incoming(key: str, *, at: datetime = T0) -> IncomingCallback:
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


async def test_an_old_keyspace_reads_back_unpruned(
    redis_url: str, namespace: str, raw: Any
) -> None:
    await write_old_keyspace(raw, namespace)
    async with open_store(redis_url, namespace=namespace) as store:
        records = await store.list_callbacks()
        assert [record.key for record in records] == [
            "old-dead",
            "old-processed",
            "old-failed",
            "old-received",
        ]
        for record in records:
            assert record.pruned_at is None
            assert not record.pruned
            assert (record.body, dict(record.headers)) == (BODY, HEADERS)
        processed = await store.get("old-processed")
        assert processed is not None
        assert (processed.state, processed.processed_at, processed.pruned_at) == (
            "processed",
            T0,
            None,
        )
        assert processed.to_json()["pruned_at"] is None
        stats = await store.stats()
        assert (stats.received, stats.duplicates, stats.processed, stats.rejected) == (4, 4, 1, 7)
        # The new filters work on the old index.
        assert [r.key for r in await store.list_callbacks(event="batch.failed")] == ["old-failed"]
        assert [r.key for r in await store.list_callbacks(since=T0 + DAY)] == [
            "old-failed",
            "old-received",
        ]
        assert [r.key for r in await store.list_callbacks(until=T0 + DAY, state="dead")] == [
            "old-dead"
        ]
        # No rejected request was ever kept there.
        assert await store.list_rejected() == []
        assert await store.get_rejected("1") is None


async def test_the_new_operations_work_on_an_old_keyspace(
    redis_url: str, namespace: str, raw: Any
) -> None:
    await write_old_keyspace(raw, namespace)
    now = T0 + 10 * DAY
    async with open_store(redis_url, namespace=namespace) as store:
        half = T0 + DAY / 2  # before old-failed is due
        assert await store.reset_for_retry("old-processed", now=half, force=True)
        forced = await store.get("old-processed")
        assert forced is not None
        assert (forced.state, forced.attempts, forced.processed_at) == ("received", 1, None)
        [claim] = await store.claim_due(now=half, lease=LEASE, limit=5)
        assert claim.token is not None
        assert claim.record.key == "old-processed"
        assert await store.complete("old-processed", claim.token, now=half)

        assert await store.prune(before=now, now=now) == Pruned(pruned=2, removed=0)
        tombstone = await store.get("old-dead")
        assert tombstone is not None
        assert (tombstone.pruned_at, tombstone.body, dict(tombstone.headers)) == (now, b"", {})
        assert tombstone.last_error == "boom"
        # A later delivery is a duplicate; the tombstone stays empty and is never reset.
        admission = await store.record_and_claim(incoming("old-dead", at=now), now=now, lease=LEASE)
        assert (admission.inserted, admission.state, admission.token) == (False, "dead", None)
        assert not await store.reset_for_retry("old-dead", now=now, force=True)
        again = await store.get("old-dead")
        assert again is not None
        assert (again.deliveries, again.body) == (3, b"")

        later = now + 30 * DAY
        assert await store.prune(before=now, now=later, tombstones_before=later) == Pruned(0, 2)
        assert await store.get("old-dead") is None
        assert await raw.zscore(f"{namespace}:order", "old-dead") is None
        assert await raw.zscore(f"{namespace}:due", "old-processed") is None
        stats = await store.stats()
        assert (stats.received, stats.duplicates, stats.processed, stats.dead) == (2, 2, 0, 0)
        assert [r.key for r in await store.list_callbacks()] == ["old-failed", "old-received"]

        await store.keep_rejected([rejected(1), rejected(2)], keep=5)
        assert [r.id for r in await store.list_rejected()] == ["2", "1"]
        assert (await store.stats()).rejected == 7  # kept requests are not counted again


async def test_replicas_open_an_old_keyspace_at_once(
    redis_url: str, namespace: str, raw: Any
) -> None:
    await write_old_keyspace(raw, namespace)
    stores = [open_store(redis_url, namespace=namespace) for _ in range(4)]
    try:
        now = T0 + 10 * DAY
        results = await asyncio.gather(*(store.prune(before=now, now=now) for store in stores))
        assert sum(result.pruned for result in results) == 2
        gets = await asyncio.gather(*(store.get("old-processed") for store in stores))
        assert all(record is not None and record.pruned_at == now for record in gets)
    finally:
        for store in stores:
            await store.close()


# --- a big keyspace ---------------------------------------------------------------------------


async def fill(store: Any, count: int, *, at: datetime = T0) -> None:
    """``count`` processed callbacks, recorded and completed at ``at``."""
    admissions = await asyncio.gather(
        *(
            store.record_and_claim(incoming(f"k{i}", at=at), now=at, lease=LEASE)
            for i in range(count)
        )
    )
    await asyncio.gather(
        *(
            store.complete(f"k{i}", admission.token, now=at)
            for i, admission in enumerate(admissions)
        )
    )


async def test_prune_works_in_short_scripts(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runflow_callbacks.stores.redis as redis_store

    monkeypatch.setattr(redis_store, "PRUNE_PAGE", 100)
    count = 1500  # well above the listpack size: a hash table that ZSCAN walks in pages
    async with open_store(redis_url, namespace=namespace) as store:
        await fill(store, count)
        pages: list[int] = []
        script = store._script  # type: ignore[attr-defined]

        async def counting(name: str, keys: list[str], args: list[Any]) -> Any:
            answer = await script(name, keys, args)
            if name in {"prune", "remove_tombstones"}:
                pages.append(int(answer[1]))
            return answer

        monkeypatch.setattr(store, "_script", counting)
        now = T0 + DAY
        assert await store.prune(before=now, now=now) == Pruned(pruned=count, removed=0)
        assert len(pages) > 5
        assert max(pages) < 500  # no page near the whole keyspace
        assert await store.prune(before=now, now=now) == Pruned(0, 0)
        pages.clear()
        later = now + DAY
        assert await store.prune(before=now, now=later, tombstones_before=later) == Pruned(
            pruned=0, removed=count
        )
        assert len(pages) > 5
        assert await store.list_callbacks() == []
        assert (await store.stats()).received == 0


async def test_replicas_pruning_at_once_take_each_callback_once(
    redis_url: str, namespace: str
) -> None:
    count = 1200
    stores = [open_store(redis_url, namespace=namespace) for _ in range(3)]
    try:
        await fill(stores[0], count)
        now = T0 + DAY

        async def prune_while_delivering(index: int) -> Pruned:
            store = stores[index]
            deliveries = [store.record(incoming(f"k{i}", at=now)) for i in range(index, count, 97)]
            result, *_ = await asyncio.gather(store.prune(before=now, now=now), *deliveries)
            assert isinstance(result, Pruned)
            return result

        results = await asyncio.gather(*(prune_while_delivering(i) for i in range(3)))
        assert sum(result.pruned for result in results) <= count
        # Whatever a redelivery moved past the horizon is pruned by the next call.
        leftover = await stores[0].prune(before=now + timedelta(seconds=1), now=now)
        assert sum(result.pruned for result in results) + leftover.pruned == count
        later = now + 10 * DAY
        removals = await asyncio.gather(
            *(store.prune(before=now, now=later, tombstones_before=later) for store in stores)
        )
        assert sum(result.removed for result in removals) == count
        assert (await stores[0].stats()).received == 0
    finally:
        for store in stores:
            await store.close()


async def test_a_time_window_lists_a_big_keyspace_as_memory_does(
    redis_url: str, namespace: str
) -> None:
    second = timedelta(seconds=1)
    arrivals = [incoming(f"k{i}", at=T0 + (i // 3) * second) for i in range(1800)]  # ties
    async with MemoryStore() as model, open_store(redis_url, namespace=namespace) as store:
        for arrival in arrivals:
            await model.record(arrival)
        await asyncio.gather(*(store.record(arrival) for arrival in arrivals))
        for since, until, limit in [
            (T0 + 100 * second, T0 + 500 * second, None),
            (T0 + 100 * second, None, 700),
            (None, T0 + 250 * second, None),
            (T0 + 599 * second, T0 + 600 * second, None),
            (T0 + 601 * second, None, None),
        ]:
            expected = await model.list_callbacks(since=since, until=until, limit=limit)
            listed = await store.list_callbacks(since=since, until=until, limit=limit)
            assert [r.key for r in listed] == [r.key for r in expected]
            assert listed == expected


# --- kept rejected requests -------------------------------------------------------------------


def rejected(number: int, *, body: bytes | None = None) -> RejectedRequest:
    kept = f'{{"n": {number}}}'.encode() if body is None else body
    return RejectedRequest(
        received_at=T0 + timedelta(seconds=number),
        reason="signature_mismatch",
        path="/callbacks/runflow",
        headers={"runflow-request-id": f"req-{number}"},
        body=kept,
        body_bytes=len(kept),
    )


async def test_rejected_bodies_and_headers_round_trip_exactly(
    redis_url: str, namespace: str
) -> None:
    body = bytes(range(256)) * 3
    headers = {"x-latin": "".join(chr(c) for c in range(1, 256)), "runflow-request-id": "r"}
    request = RejectedRequest(
        received_at=T0,
        reason="bad \udcff reason \x00",
        path="/p\u00e9",
        headers=headers,
        body=body,
        body_bytes=4096,
    )
    async with open_store(redis_url, namespace=namespace) as store:
        await store.keep_rejected([request], keep=3)
    async with open_store(redis_url, namespace=namespace) as store:
        [kept] = await store.list_rejected()
        assert kept.id is not None
        assert (kept.body, dict(kept.headers), kept.reason, kept.path) == (
            body,
            headers,
            request.reason,
            request.path,
        )
        assert (kept.received_at, kept.body_bytes, kept.truncated) == (T0, 4096, True)
        assert await store.get_rejected(kept.id) == kept
        for odd in ("", "0", "01", "-1", "1.0", " 1", "1" * 40, "\u0661", "1\n"):
            assert await store.get_rejected(odd) is None
            assert not await store.mark_replayed(odd, key="k", now=T0)


async def test_rejected_ids_grow_and_trimming_is_atomic(
    redis_url: str, namespace: str, raw: Any
) -> None:
    async with open_store(redis_url, namespace=namespace) as store:
        # Writers at once: every request gets its own id, and only the newest `keep` stay.
        await asyncio.gather(
            *(store.keep_rejected([rejected(n), rejected(n + 100)], keep=4) for n in range(10))
        )
        kept = await store.list_rejected()
        assert [int(r.id or 0) for r in kept] == [20, 19, 18, 17]
        # More requests at once than are kept: the oldest of them take ids and go at once.
        await store.keep_rejected([rejected(n) for n in range(10)], keep=2)
        assert [r.id for r in await store.list_rejected()] == ["30", "29"]
        assert [r.headers["runflow-request-id"] for r in await store.list_rejected()] == [
            "req-9",
            "req-8",
        ]
        assert await store.get_rejected("20") is None
        assert not await store.mark_replayed("20", key="k", now=T0)
        assert not await raw.exists(f"{namespace}:rejected:20")  # not brought back half-made
        assert await raw.zcard(f"{namespace}:rejected") == 2
        assert len(await raw.keys(f"{namespace}:rejected:*")) == 2
        assert await store.list_callbacks() == []
