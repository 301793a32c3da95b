"""One suite for every store backend: memory, SQLite, Redis and PostgreSQL (real servers)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runflow_callbacks.errors import ConfigurationError, StoreError
from runflow_callbacks.models import parse_callback
from runflow_callbacks.stores import (
    STATES,
    Admission,
    CallbackStore,
    IncomingCallback,
    StoreStats,
    UnknownCallbackError,
    check_key,
    default_key,
    open_store,
)
from runflow_callbacks.stores.memory import MemoryStore
from runflow_callbacks.stores.sqlite import SQLiteStore
from runflow_callbacks.testing import free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from runflow_callbacks.stores import Source, StoredCallback

StoreFactory = Callable[[], CallbackStore]

T0 = datetime(2026, 5, 6, 10, 0, 0, 123456, tzinfo=timezone.utc)
LEASE = timedelta(seconds=30)
BATCH_ID = "0190f2a4-0000-7000-8000-000000000002"
# Not UTF-8 on purpose: bytes must come back exactly as they were recorded.
ODD_BYTES = (
    b'{"event": "batch.succeeded", "batch_id": "' + BATCH_ID.encode() + b'", "x": "\xff\xfe\x00"}'
)


# Strings JSON allows that UTF-8 (a lone surrogate) or PostgreSQL text (NUL) cannot hold as
# they are, and look-alikes of the escaped form a backend may use for them.
ODD_TEXTS = (
    "lone \udcff surrogate",
    "nul \x00 inside",
    "line\u2028separator",
    "emoji \U0001f389",
    '\ufdd0"looks escaped"',
    "\\u0000 backslash",
)


def odd_incoming(key: str, odd: str) -> IncomingCallback:
    """A callback with ``odd`` in every text field and in a header value."""
    return IncomingCallback(
        key=key,
        kind="batch",
        subject_id=f"id-{odd}",
        event=f"batch.{odd}",
        body=b'{"event": "batch.\\udcff"}',
        headers={"Runflow-Request-Id": odd, "X-Odd": f"v{odd}"},
        secret_id=odd,
        secret_label=odd,
        request_id=odd,
        received_at=T0,
    )


def incoming(
    key: str = "batch:b1:batch.succeeded",
    *,
    at: datetime = T0,
    body: bytes = b'{"event": "batch.succeeded"}',
    source: Source = "delivery",
) -> IncomingCallback:
    return IncomingCallback(
        key=key,
        kind="batch",
        subject_id="b1",
        event="batch.succeeded",
        body=body,
        headers={"Runflow-Signature": "ab" * 32, "Runflow-Request-Id": "req-1"},
        secret_id="sec-1",
        secret_label="primary",
        request_id="req-1",
        received_at=at,
        source=source,
    )


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> AsyncIterator[StoreFactory]:
    """Opens stores that share one namespace (separate connections, one memory object)."""
    opened: list[CallbackStore] = []
    if request.param == "memory":
        shared = MemoryStore()
        opened.append(shared)

        def factory() -> CallbackStore:
            return shared

    else:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'callbacks.db'}"
        else:
            fixture = "redis_url" if request.param == "redis" else "postgres_url"
            url = request.getfixturevalue(fixture)

        def factory() -> CallbackStore:
            store = open_store(url, namespace=namespace)
            opened.append(store)
            return store

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> CallbackStore:
    return store_factory()


class TestStore:
    """The semantics every backend shares (see the ``runflow_callbacks.stores`` docstring)."""

    async def test_record_keeps_everything_exactly(self, store: CallbackStore) -> None:
        result = await store.record(incoming(body=ODD_BYTES))
        assert result.inserted
        record = result.record
        assert record.body == ODD_BYTES
        assert dict(record.headers) == {
            "Runflow-Signature": "ab" * 32,
            "Runflow-Request-Id": "req-1",
        }
        assert (record.secret_id, record.secret_label, record.request_id) == (
            "sec-1",
            "primary",
            "req-1",
        )
        assert (record.kind, record.subject_id, record.event) == ("batch", "b1", "batch.succeeded")
        assert record.received_at == T0
        assert record.received_at.tzinfo is not None
        assert (record.state, record.attempts, record.deliveries, record.source) == (
            "received",
            0,
            1,
            "delivery",
        )
        again = await store.get(record.key)
        assert again == record
        assert "\\xff" not in repr(record)  # the body stays out of repr

    async def test_duplicate_counts_a_delivery_only(self, store: CallbackStore) -> None:
        await store.record(incoming())
        second = await store.record(incoming(at=T0 + timedelta(seconds=5), body=b"other"))
        assert not second.inserted
        assert second.record.deliveries == 2
        assert second.record.body == b'{"event": "batch.succeeded"}'  # the first bytes stay
        reconciled = await store.record(incoming(source="reconcile"))
        assert not reconciled.inserted
        assert reconciled.record.deliveries == 2
        stats = await store.stats()
        assert (stats.received, stats.duplicates, stats.reconciled) == (1, 1, 0)

    async def test_reconciled_first(self, store: CallbackStore) -> None:
        result = await store.record(incoming(source="reconcile"))
        assert result.inserted
        assert (result.record.source, result.record.deliveries) == ("reconcile", 0)
        stats = await store.stats()
        assert (stats.received, stats.duplicates, stats.reconciled) == (1, 0, 1)
        # Its first delivery is no duplicate; the second is.
        assert (await store.record(incoming())).record.deliveries == 1
        assert (await store.stats()).duplicates == 0
        assert (await store.record(incoming())).record.deliveries == 2
        assert (await store.stats()).duplicates == 1

    async def test_claim_is_exclusive_until_complete(self, store: CallbackStore) -> None:
        await store.record(incoming())
        first = await store.claim("batch:b1:batch.succeeded", now=T0, lease=LEASE)
        assert first.acquired
        assert first.token
        assert (first.record.state, first.record.attempts) == ("processing", 1)
        assert first.record.lease_expires_at == T0 + LEASE
        second = await store.claim("batch:b1:batch.succeeded", now=T0, lease=LEASE)
        assert not second.acquired
        assert second.record.state == "processing"
        assert not await store.complete("batch:b1:batch.succeeded", "not-the-token", now=T0)
        assert await store.complete("batch:b1:batch.succeeded", first.token, now=T0)
        done = await store.get("batch:b1:batch.succeeded")
        assert done is not None
        assert (done.state, done.processed_at, done.lease_expires_at) == ("processed", T0, None)
        third = await store.claim("batch:b1:batch.succeeded", now=T0 + LEASE * 10, lease=LEASE)
        assert not third.acquired
        assert third.record.state == "processed"
        assert not await store.complete("batch:b1:batch.succeeded", first.token, now=T0)

    async def test_unknown_key(self, store: CallbackStore) -> None:
        assert await store.get("nope") is None
        with pytest.raises(UnknownCallbackError) as caught:
            await store.claim("nope", now=T0, lease=LEASE)
        assert caught.value.key == "nope"
        with pytest.raises(UnknownCallbackError):
            await store.reset_for_retry("nope", now=T0)

    async def test_failure_is_recorded_and_claimable_again(self, store: CallbackStore) -> None:
        key = incoming().key
        await store.record(incoming())
        claim = await store.claim(key, now=T0, lease=LEASE)
        assert claim.token
        retry_at = T0 + timedelta(seconds=8)
        assert await store.fail(
            key, claim.token, now=T0, error="ValueError: boom", retry_at=retry_at
        )
        failed = await store.get(key)
        assert failed is not None
        assert (failed.state, failed.last_error, failed.next_attempt_at) == (
            "failed",
            "ValueError: boom",
            retry_at,
        )
        assert failed.lease_expires_at is None
        # A redelivery may retry at once (sync mode); the inbox waits for next_attempt_at.
        again = await store.claim(key, now=T0, lease=LEASE)
        assert again.acquired
        assert again.record.attempts == 2
        assert again.token
        assert await store.fail(key, again.token, now=T0, error="boom", retry_at=None, dead=True)
        dead = await store.get(key)
        assert dead is not None
        assert (dead.state, dead.next_attempt_at) == ("dead", None)
        assert not (await store.claim(key, now=T0 + LEASE * 10, lease=LEASE)).acquired

    async def test_lease_expiry_and_fencing(self, store: CallbackStore) -> None:
        key = incoming().key
        await store.record(incoming())
        crashed = await store.claim(key, now=T0, lease=LEASE)
        assert crashed.token
        almost = T0 + LEASE - timedelta(microseconds=1)
        assert not (await store.claim(key, now=almost, lease=LEASE)).acquired
        takeover = await store.claim(key, now=T0 + LEASE, lease=LEASE)
        assert takeover.acquired
        assert takeover.token
        assert takeover.token != crashed.token
        assert takeover.record.attempts == 2
        # The stale holder wakes up: it can neither fail nor complete the newer run.
        assert not await store.fail(key, crashed.token, now=almost, error="late", retry_at=None)
        assert not await store.complete(key, crashed.token, now=almost)
        current = await store.get(key)
        assert current is not None
        assert (current.state, current.last_error) == ("processing", None)
        assert await store.complete(key, takeover.token, now=T0 + LEASE)

    async def test_renew_extends_only_the_current_lease(self, store: CallbackStore) -> None:
        key = incoming().key
        await store.record(incoming())
        first = await store.claim(key, now=T0, lease=LEASE)
        assert first.token
        later = T0 + timedelta(seconds=20)
        assert await store.renew(key, first.token, now=later, lease=LEASE)
        renewed = await store.get(key)
        assert renewed is not None
        assert renewed.lease_expires_at == later + LEASE
        assert not (await store.claim(key, now=T0 + LEASE, lease=LEASE)).acquired
        assert await store.claim_due(now=T0 + LEASE, lease=LEASE, limit=5) == []
        takeover = await store.claim(key, now=later + LEASE, lease=LEASE)
        assert takeover.token
        assert not await store.renew(key, first.token, now=later + LEASE, lease=LEASE)
        assert await store.complete(key, takeover.token, now=later + LEASE)
        assert not await store.renew(key, takeover.token, now=later + LEASE, lease=LEASE)
        with pytest.raises(UnknownCallbackError):
            await store.renew("nope", "token", now=T0, lease=LEASE)

    async def test_claim_due(self, store: CallbackStore) -> None:
        for index, name in enumerate("abcd"):
            await store.record(incoming(name, at=T0 + timedelta(seconds=index)))
        now = T0 + timedelta(seconds=10)
        b = await store.claim("b", now=now, lease=LEASE)
        c = await store.claim("c", now=now, lease=LEASE)
        d = await store.claim("d", now=now, lease=LEASE)
        assert b.token
        assert c.token
        assert d.token
        await store.fail("b", b.token, now=now, error="e", retry_at=now + timedelta(seconds=60))
        await store.complete("d", d.token, now=now)
        # a is received (due), b waits for its retry, c is under a live lease, d is done.
        due = await store.claim_due(now=now, lease=LEASE, limit=10)
        assert [claim.record.key for claim in due] == ["a"]
        assert all(claim.acquired for claim in due)
        assert due[0].record.attempts == 1
        later = now + timedelta(seconds=60)
        due = await store.claim_due(now=later, lease=LEASE, limit=10)
        # c's lease expired at now+30 (due first), b became due at now+60, a's at now+30.
        assert sorted(claim.record.key for claim in due) == ["a", "b", "c"]
        assert len({claim.token for claim in due}) == 3
        assert await store.claim_due(now=later, lease=LEASE, limit=10) == []

    async def test_claim_due_limit_and_order(self, store: CallbackStore) -> None:
        for index in range(5):
            await store.record(incoming(f"k{index}", at=T0 + timedelta(seconds=5 - index)))
        first = await store.claim_due(now=T0 + timedelta(minutes=1), lease=LEASE, limit=2)
        assert [claim.record.key for claim in first] == ["k4", "k3"]  # oldest received first
        rest = await store.claim_due(now=T0 + timedelta(minutes=1), lease=LEASE, limit=10)
        assert [claim.record.key for claim in rest] == ["k2", "k1", "k0"]

    async def test_list_and_filter(self, store: CallbackStore) -> None:
        for index in range(4):
            await store.record(incoming(f"k{index}", at=T0 + timedelta(seconds=4 - index)))
        claim = await store.claim("k1", now=T0, lease=LEASE)
        assert claim.token
        await store.complete("k1", claim.token, now=T0)
        listed = await store.list_callbacks()
        assert [record.key for record in listed] == ["k3", "k2", "k1", "k0"]
        assert [record.key for record in await store.list_callbacks(limit=2)] == ["k3", "k2"]
        processed = await store.list_callbacks(state="processed")
        assert [record.key for record in processed] == ["k1"]
        assert [r.key for r in await store.list_callbacks(state="received", limit=1)] == ["k3"]
        summary = listed[2].to_json()
        assert summary["state"] == "processed"
        assert summary["processed_at"] == T0.isoformat()
        assert "body" not in summary

    async def test_stats(self, store: CallbackStore) -> None:
        assert await store.stats() == StoreStats()
        for name in "abcde":
            await store.record(incoming(name))
        await store.record(incoming("a"))
        await store.record(incoming("a"))
        await store.record(incoming("f", source="reconcile"))
        tokens = {}
        for name in "abcd":
            claim = await store.claim(name, now=T0, lease=LEASE)
            assert claim.token
            tokens[name] = claim.token
        await store.complete("a", tokens["a"], now=T0)
        await store.fail("b", tokens["b"], now=T0, error="e", retry_at=None)
        await store.fail("c", tokens["c"], now=T0, error="e", retry_at=None, dead=True)
        await store.note_rejected()
        await store.note_rejected(2)
        assert await store.stats() == StoreStats(
            received=6,
            duplicates=2,
            pending=2,
            processing=1,
            processed=1,
            failed=1,
            dead=1,
            reconciled=1,
            rejected=3,
        )

    async def test_reset_for_retry(self, store: CallbackStore) -> None:
        for name in "abc":
            await store.record(incoming(name))
        a = await store.claim("a", now=T0, lease=LEASE)
        b = await store.claim("b", now=T0, lease=LEASE)
        c = await store.claim("c", now=T0, lease=LEASE)
        assert a.token
        assert b.token
        assert c.token
        await store.fail("a", a.token, now=T0, error="e", retry_at=None, dead=True)
        await store.complete("b", b.token, now=T0)
        later = T0 + timedelta(seconds=1)
        assert await store.reset_for_retry("a", now=later)
        assert not await store.reset_for_retry("b", now=later)  # processed stays processed
        assert not await store.reset_for_retry("c", now=later)  # live lease
        record = await store.get("a")
        assert record is not None
        assert (record.state, record.attempts, record.last_error) == ("received", 0, "e")
        due = await store.claim_due(now=later, lease=LEASE, limit=10)
        assert [claim.record.key for claim in due] == ["a"]
        assert not await store.fail("c", a.token, now=later, error="x", retry_at=None)

    async def test_concurrent_claims_exactly_one_wins(self, store_factory: StoreFactory) -> None:
        stores = [store_factory() for _ in range(4)]
        key = incoming().key
        recorded = await asyncio.gather(*(s.record(incoming()) for s in stores * 3))
        assert sum(result.inserted for result in recorded) == 1
        claims = await asyncio.gather(*(s.claim(key, now=T0, lease=LEASE) for s in stores * 5))
        assert sum(claim.acquired for claim in claims) == 1
        record = await stores[0].get(key)
        assert record is not None
        assert (record.deliveries, record.attempts) == (12, 1)

    async def test_concurrent_claim_due_shares_work(self, store_factory: StoreFactory) -> None:
        stores = [store_factory() for _ in range(4)]
        for index in range(20):
            await stores[0].record(incoming(f"k{index:02}"))
        batches = await asyncio.gather(
            *(s.claim_due(now=T0, lease=LEASE, limit=3) for s in stores * 3)
        )
        claimed = [claim.record.key for batch in batches for claim in batch]
        assert len(claimed) == len(set(claimed))  # nothing claimed twice
        assert len(claimed) == 20

    async def test_bad_arguments(self, store: CallbackStore) -> None:
        await store.record(incoming())
        naive = datetime(2026, 5, 6, 10, 0)  # a naive datetime: the bad input
        with pytest.raises(ConfigurationError, match="timezone-aware"):
            await store.claim(incoming().key, now=naive, lease=LEASE)
        with pytest.raises(ConfigurationError, match="lease"):
            await store.claim(incoming().key, now=T0, lease=timedelta(0))
        with pytest.raises(ConfigurationError, match="limit"):
            await store.list_callbacks(limit=0)
        with pytest.raises(ConfigurationError, match="state"):
            await store.list_callbacks(state="done")  # type: ignore[arg-type] # the bad input
        with pytest.raises(ConfigurationError, match="limit"):
            await store.claim_due(now=T0, lease=LEASE, limit=-1)

    async def test_record_and_claim_records_a_new_key_as_record_does_and_leases_it(
        self, store: CallbackStore
    ) -> None:
        now = T0 + timedelta(seconds=2)
        admission = await store.record_and_claim(incoming(body=ODD_BYTES), now=now, lease=LEASE)
        assert admission.inserted
        assert admission.acquired
        assert admission.token
        assert (admission.state, admission.attempts) == ("processing", 1)
        assert admission.token not in repr(admission)  # the token stays out of repr
        taken = await store.get(incoming().key)
        assert taken is not None
        assert (taken.state, taken.attempts, taken.deliveries) == ("processing", 1, 1)
        assert (taken.lease_expires_at, taken.updated_at) == (now + LEASE, now)
        # Everything else is exactly what record stores (the body bytes above all).
        recorded = await store.record(incoming("other", body=ODD_BYTES))
        assert recorded.record.body == ODD_BYTES
        assert taken == dataclasses.replace(
            recorded.record,
            key=taken.key,
            state="processing",
            attempts=1,
            lease_expires_at=now + LEASE,
            updated_at=now,
        )
        # The token is a real lease: it fences, renews and completes like a claim's.
        assert not (await store.claim(taken.key, now=now, lease=LEASE)).acquired
        assert await store.claim_due(now=now + LEASE / 2, lease=LEASE, limit=10) != []  # other
        assert await store.renew(taken.key, admission.token, now=now, lease=LEASE)
        assert await store.complete(taken.key, admission.token, now=now)
        done = await store.get(taken.key)
        assert done is not None
        assert done.state == "processed"

    async def test_record_and_claim_without_a_lease_only_records(
        self, store: CallbackStore
    ) -> None:
        admission = await store.record_and_claim(
            incoming(body=ODD_BYTES), now=T0 + timedelta(seconds=2), lease=None
        )
        assert admission == Admission(inserted=True, state="received", attempts=0)
        assert not admission.acquired
        stored = await store.get(incoming().key)
        recorded = await store.record(incoming("other", body=ODD_BYTES))
        assert stored == dataclasses.replace(recorded.record, key=incoming().key)
        # Due from received_at, exactly as a recorded callback is.
        due = await store.claim_due(now=T0, lease=LEASE, limit=10)
        assert sorted(claim.record.key for claim in due) == ["batch:b1:batch.succeeded", "other"]

    async def test_record_and_claim_of_a_duplicate_counts_it_and_claims_only_when_claimable(
        self, store: CallbackStore
    ) -> None:
        key = incoming().key
        first = await store.record_and_claim(incoming(), now=T0, lease=LEASE)
        assert first.token
        later = T0 + timedelta(seconds=1)
        live = await store.record_and_claim(
            incoming(at=later, body=b"other"), now=later, lease=LEASE
        )
        assert live == Admission(inserted=False, state="processing", attempts=1)
        record = await store.get(key)
        assert record is not None
        assert (record.deliveries, record.updated_at) == (2, later)  # counted as record does
        assert record.body == b'{"event": "batch.succeeded"}'  # the first bytes stay
        assert record.lease_expires_at == T0 + LEASE  # the live lease is untouched
        # The holder crashed: once its lease expired, the next delivery takes over.
        expired = T0 + LEASE
        takeover = await store.record_and_claim(incoming(at=expired), now=expired, lease=LEASE)
        assert (takeover.inserted, takeover.state, takeover.attempts) == (False, "processing", 2)
        assert takeover.token
        assert takeover.token != first.token
        assert not await store.complete(key, first.token, now=expired)
        # failed is claimable at once (a redelivery may retry before retry_at).
        retry_at = expired + timedelta(minutes=5)
        assert await store.fail(key, takeover.token, now=expired, error="E", retry_at=retry_at)
        retried = await store.record_and_claim(incoming(at=expired), now=expired, lease=LEASE)
        assert (retried.state, retried.attempts, retried.acquired) == ("processing", 3, True)
        assert retried.token
        assert await store.complete(key, retried.token, now=expired)
        final = await store.record_and_claim(incoming(at=expired), now=expired, lease=LEASE)
        assert final == Admission(inserted=False, state="processed", attempts=3)
        # received: claimable; with lease=None it is counted only.
        await store.record(incoming("r"))
        counted = await store.record_and_claim(incoming("r", at=later), now=later, lease=None)
        assert counted == Admission(inserted=False, state="received", attempts=0)
        taken = await store.record_and_claim(incoming("r", at=later), now=later, lease=LEASE)
        assert (taken.state, taken.attempts, taken.acquired) == ("processing", 1, True)
        # dead is final.
        assert taken.token
        assert await store.fail("r", taken.token, now=later, error="E", retry_at=None, dead=True)
        dead = await store.record_and_claim(incoming("r", at=later), now=later, lease=LEASE)
        assert dead == Admission(inserted=False, state="dead", attempts=1)
        stored = await store.get("r")
        assert stored is not None
        assert stored.deliveries == 4

    async def test_record_and_claim_from_reconciliation_counts_no_delivery(
        self, store: CallbackStore
    ) -> None:
        later = T0 + timedelta(seconds=1)
        first = await store.record_and_claim(incoming(source="reconcile"), now=T0, lease=None)
        assert first == Admission(inserted=True, state="received", attempts=0)
        again = await store.record_and_claim(
            incoming(at=later, source="reconcile"), now=later, lease=None
        )
        assert again == Admission(inserted=False, state="received", attempts=0)
        record = await store.get(incoming().key)
        assert record is not None
        assert (record.source, record.deliveries, record.updated_at) == ("reconcile", 0, T0)
        delivered = await store.record_and_claim(incoming(at=later), now=later, lease=LEASE)
        assert (delivered.inserted, delivered.acquired) == (False, True)
        record = await store.get(incoming().key)
        assert record is not None
        assert (record.source, record.deliveries) == ("reconcile", 1)
        stats = await store.stats()
        assert (stats.received, stats.duplicates, stats.reconciled) == (1, 0, 1)

    async def test_release_leaves_an_unhandled_callback_until_its_next_arrival(
        self, store: CallbackStore
    ) -> None:
        key = incoming().key
        first = await store.record_and_claim(incoming(), now=T0, lease=LEASE)
        assert first.token
        stale = await store.claim(key, now=T0 + LEASE, lease=LEASE)  # the first holder's expired
        assert stale.token
        assert not await store.release(key, first.token, now=T0 + LEASE)  # a stale token
        now = T0 + LEASE + timedelta(seconds=1)
        assert await store.release(key, stale.token, now=now)
        record = await store.get(key)
        assert record is not None
        assert (record.state, record.attempts, record.updated_at) == ("unhandled", 1, now)
        assert (record.lease_expires_at, record.next_attempt_at) == (None, None)
        # Given back: the token is spent, and no worker picks it up, however late.
        assert not await store.release(key, stale.token, now=now)
        assert not await store.complete(key, stale.token, now=now)
        assert not await store.renew(key, stale.token, now=now, lease=LEASE)
        assert await store.claim_due(now=now + timedelta(days=1), lease=LEASE, limit=10) == []
        assert [r.key for r in await store.list_callbacks(state="unhandled")] == [key]
        assert "unhandled" in STATES
        stats = await store.stats()
        assert (stats.unhandled, stats.pending, stats.processing) == (1, 0, 0)
        assert stats.to_json()["unhandled"] == 1
        # Its next delivery finds a handler: it becomes received, and is claimed.
        again = await store.record_and_claim(incoming(at=now), now=now, lease=LEASE)
        assert (again.inserted, again.state, again.attempts, again.acquired) == (
            False,
            "processing",
            2,
            True,
        )
        assert again.token
        assert await store.release(key, again.token, now=now)
        # Recorded only (inbox mode), it becomes received and due now.
        later = now + timedelta(seconds=1)
        queued = await store.record_and_claim(incoming(at=later), now=later, lease=None)
        assert queued == Admission(inserted=False, state="received", attempts=1)
        due = await store.claim_due(now=later, lease=LEASE, limit=10)
        assert [(claim.record.key, claim.record.attempts) for claim in due] == [(key, 2)]
        assert due[0].token
        assert await store.release(key, due[0].token, now=later)
        # claim and reset_for_retry take an unhandled callback too.
        claimed = await store.claim(key, now=later, lease=LEASE)
        assert (claimed.acquired, claimed.record.attempts) == (True, 2)
        assert claimed.token
        assert await store.release(key, claimed.token, now=later)
        assert await store.reset_for_retry(key, now=later)
        reset = await store.get(key)
        assert reset is not None
        assert (reset.state, reset.attempts) == ("received", 0)
        assert (await store.stats()).unhandled == 0
        with pytest.raises(UnknownCallbackError):
            await store.release("nope", "token", now=now)

    async def test_concurrent_record_and_claim_records_once_and_one_wins(
        self, store_factory: StoreFactory
    ) -> None:
        stores = [store_factory() for _ in range(4)]
        admissions = await asyncio.gather(
            *(s.record_and_claim(incoming(), now=T0, lease=LEASE) for s in stores * 4)
        )
        assert sum(admission.inserted for admission in admissions) == 1
        assert sum(admission.acquired for admission in admissions) == 1
        assert {admission.attempts for admission in admissions} == {1}
        record = await stores[0].get(incoming().key)
        assert record is not None
        assert (record.deliveries, record.attempts, record.state) == (16, 1, "processing")
        stats = await stores[0].stats()
        assert (stats.received, stats.duplicates, stats.processing) == (1, 15, 1)

    async def test_record_and_claim_rejects_bad_arguments(self, store: CallbackStore) -> None:
        naive = datetime(2026, 5, 6, 10, 0)  # a naive datetime: the bad input
        with pytest.raises(ConfigurationError, match="timezone-aware"):
            await store.record_and_claim(incoming(), now=naive, lease=LEASE)
        with pytest.raises(ConfigurationError, match="lease"):
            await store.record_and_claim(incoming(), now=T0, lease=timedelta(0))
        assert await store.get(incoming().key) is None

    async def test_is_a_callback_store(self, store: CallbackStore) -> None:
        assert isinstance(store, CallbackStore)
        async with store as entered:
            assert entered is store

    @pytest.mark.parametrize("odd", ODD_TEXTS, ids=ascii)
    async def test_any_string_json_allows_is_kept_exactly_in_keys_ids_events_and_headers(
        self, store: CallbackStore, odd: str
    ) -> None:
        key = f"batch:id-{odd}:batch.{odd}"
        callback = odd_incoming(key, odd)
        admission = await store.record_and_claim(callback, now=T0, lease=LEASE)
        assert (admission.inserted, admission.acquired) == (True, True)
        assert admission.token
        # The key finds the same callback again: a duplicate, not a second record.
        again = await store.record_and_claim(callback, now=T0, lease=LEASE)
        assert (again.inserted, again.state, again.acquired) == (False, "processing", False)
        record = await store.get(key)
        assert record is not None
        assert (record.key, record.subject_id, record.event) == (key, f"id-{odd}", f"batch.{odd}")
        assert (record.secret_id, record.secret_label, record.request_id) == (odd, odd, odd)
        assert dict(record.headers) == {"Runflow-Request-Id": odd, "X-Odd": f"v{odd}"}
        assert record.deliveries == 2
        # Every keyed operation reaches it.
        assert await store.renew(key, admission.token, now=T0, lease=LEASE)
        assert await store.fail(key, admission.token, now=T0, error=f"E: {odd}", retry_at=None)
        failed = await store.get(key)
        assert failed is not None
        assert (failed.state, failed.last_error) == ("failed", f"E: {odd}")
        claim = await store.claim(key, now=T0, lease=LEASE)
        assert claim.token
        assert claim.record.key == key
        assert await store.release(key, claim.token, now=T0)
        assert await store.reset_for_retry(key, now=T0)
        [due] = await store.claim_due(now=T0, lease=LEASE, limit=10)
        assert (due.record.key, due.record.event) == (key, f"batch.{odd}")
        assert due.token
        assert await store.complete(key, due.token, now=T0)
        [listed] = await store.list_callbacks(state="processed")
        assert listed == await store.get(key)
        assert (listed.key, listed.subject_id, listed.headers["X-Odd"]) == (
            key,
            f"id-{odd}",
            f"v{odd}",
        )

    async def test_odd_keys_are_distinct_from_each_other_and_from_their_plain_look_alikes(
        self, store: CallbackStore
    ) -> None:
        look_alikes = ["lone  surrogate", "nul  inside", "\\udcff", "\\x00", '"\\udcff"']
        # What an escaping backend might write for the first one, recorded as plain text.
        look_alikes.append("\ufdd0" + json.dumps(ODD_TEXTS[0]))
        keys = [*ODD_TEXTS, *look_alikes]
        for key in keys:
            assert (await store.record(odd_incoming(key, key))).inserted
        assert sorted(record.key for record in await store.list_callbacks()) == sorted(keys)
        for key in keys:
            record = await store.get(key)
            assert record is not None
            assert (record.key, record.event, record.deliveries) == (key, f"batch.{key}", 1)

    async def test_a_key_no_json_could_carry_two_surrogate_halves_is_kept_apart_from_the_pair(
        self, store: CallbackStore
    ) -> None:
        # JSON reads "\ud83c\udf89" as one emoji, but a key function may build the two halves.
        halves, emoji = "k-\ud83c\udf89", "k-\U0001f389"
        for key in (halves, emoji):
            callback = dataclasses.replace(odd_incoming(key, key), headers={})
            assert (await store.record_and_claim(callback, now=T0, lease=LEASE)).acquired
        for key in (halves, emoji):
            record = await store.get(key)
            assert record is not None
            assert (record.key, record.subject_id, record.deliveries) == (key, f"id-{key}", 1)


# --- backend-specific ----------------------------------------------------------------------


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "callbacks.db"
    path.parent.mkdir()  # the store creates its file, never its directory
    async with open_store(f"sqlite:///{path}") as store:
        await store.record(incoming(body=ODD_BYTES))
    async with open_store(f"sqlite:///{path}") as store:
        record = await store.get(incoming().key)
    assert record is not None
    assert record.body == ODD_BYTES
    assert record.received_at == T0


_CLAIMER = """
import asyncio, sys
from datetime import datetime, timedelta, timezone
from runflow_callbacks.stores import open_store

async def main() -> None:
    async with open_store(sys.argv[1]) as store:
        sys.stdin.readline()  # start together
        claim = await store.claim(
            "batch:b1:batch.succeeded",
            now=datetime(2026, 5, 6, 10, tzinfo=timezone.utc),
            lease=timedelta(seconds=30),
        )
        print("won" if claim.acquired else "lost", flush=True)

asyncio.run(main())
"""


def test_sqlite_claim_across_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"

    async def record() -> None:
        async with open_store(url) as store:
            await store.record(incoming())

    asyncio.run(record())
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    answers = [process.communicate(timeout=60)[0].strip() for process in processes]
    assert sorted(answers) == ["lost", "lost", "lost", "won"]


async def test_sqlite_unwritable_path_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    async with SQLiteStore(blocker / "sub" / "db.sqlite") as store:
        with pytest.raises(StoreError, match="cannot open the SQLite store"):
            await store.get("x")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///relative/callbacks.db", "relative/callbacks.db"),
        ("sqlite:////abs/callbacks.db", "/abs/callbacks.db"),
        ("sqlite:///./runflow-callbacks.db", "runflow-callbacks.db"),
    ],
)
async def test_open_store_sqlite_paths(url: str, expected: str) -> None:
    store = open_store(url)
    assert isinstance(store, SQLiteStore)
    assert store.path == Path(expected)
    await store.close()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://user:hunter2@db/x",
        "hunter2",
        "",
        "sqlite:///",
        "http://user:hunter2@example.com",
    ],
)
def test_open_store_rejects_unknown_urls(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store(url)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("namespace", ["", "Has-Caps", "1x", "x; DROP TABLE y", "a" * 49])
def test_open_store_rejects_bad_namespaces(namespace: str) -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        open_store("memory://", namespace=namespace)


async def test_closed_store_refuses_work() -> None:
    store = open_store("memory://")
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.get("x")


@pytest.mark.redis
async def test_redis_unreachable_is_a_store_error() -> None:
    async with open_store(f"redis://:hunter2@127.0.0.1:{free_port()}/0") as store:
        with pytest.raises(StoreError) as caught:
            await store.get("x")
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
async def test_burst_waits_for_a_free_connection(
    backend: str, namespace: str, request: pytest.FixtureRequest
) -> None:
    from runflow_callbacks.stores.postgres import PostgresStore
    from runflow_callbacks.stores.redis import RedisStore

    url = request.getfixturevalue(f"{backend}_url")
    kind = RedisStore if backend == "redis" else PostgresStore
    async with kind(url, namespace=namespace, max_connections=2) as store:
        await store.record(incoming())
        found = await asyncio.gather(*(store.get(incoming().key) for _ in range(50)))
    assert all(record is not None for record in found)


@pytest.mark.postgres
async def test_postgres_unreachable_is_a_store_error() -> None:
    url = f"postgresql://u:hunter2@127.0.0.1:{free_port()}/db?connect_timeout=5"
    async with open_store(url) as store:
        with pytest.raises(StoreError) as caught:
            await store.get("x")
    assert "hunter2" not in str(caught.value)


def test_default_key() -> None:
    body = b'{"event": "batch.succeeded", "batch_id": "' + BATCH_ID.encode() + b'"}'
    batch = parse_callback(body)
    assert default_key(batch, body) == f"batch:{BATCH_ID}:batch.succeeded"
    generic = b'{"hello": "world"}'
    key = default_key(parse_callback(generic), generic)
    assert key.startswith("sha256:")
    assert len(key) == len("sha256:") + 64
    with pytest.raises(ConfigurationError, match="idempotency key"):
        check_key("")
    assert len(check_key("k" * 5000)) == 512


# --- every backend agrees with the in-memory model -------------------------------------------

_KEYS = ("k0", "k1", "k2")
_operation = st.one_of(
    st.tuples(
        st.just("record"), st.sampled_from(_KEYS), st.sampled_from(["delivery", "reconcile"])
    ),
    st.tuples(st.just("claim"), st.sampled_from(_KEYS), st.integers(0, 3)),
    st.tuples(st.just("complete"), st.sampled_from(_KEYS), st.booleans()),
    st.tuples(st.just("renew"), st.sampled_from(_KEYS), st.booleans()),
    st.tuples(st.just("fail"), st.sampled_from(_KEYS), st.sampled_from([None, 5, -1])),
    st.tuples(st.just("due"), st.just(""), st.integers(1, 3)),
    st.tuples(st.just("reset"), st.sampled_from(_KEYS), st.just(0)),
    st.tuples(st.just("tick"), st.just(""), st.integers(1, 40)),
    st.tuples(
        st.just("admit"),
        st.sampled_from(_KEYS),
        st.tuples(st.sampled_from(["delivery", "reconcile"]), st.sampled_from([None, 0, 3])),
    ),
    st.tuples(st.just("release"), st.sampled_from(_KEYS), st.booleans()),
)


async def _replay(store: CallbackStore, operations: list[tuple[str, str, Any]]) -> list[object]:
    """Run ``operations`` on ``store``; what a caller could observe, tokens left out."""
    now = T0
    tokens: dict[str, list[str]] = {}
    seen: list[object] = []
    for name, key, arg in operations:
        try:
            if name == "record":
                source: Source = arg
                result = await store.record(incoming(key, at=now, source=source))
                seen.append(("record", result.inserted, _view(result.record)))
            elif name == "claim":
                claim = await store.claim(key, now=now, lease=timedelta(seconds=10 * (arg + 1)))
                if claim.token:
                    tokens.setdefault(key, []).append(claim.token)
                seen.append(("claim", claim.acquired, _view(claim.record)))
            elif name == "admit":
                source, lease = arg
                admission = await store.record_and_claim(
                    # Received a second before now, so that updated_at tells the two apart.
                    incoming(key, at=now - timedelta(seconds=1), source=source),
                    now=now,
                    lease=None if lease is None else timedelta(seconds=10 * (lease + 1)),
                )
                if admission.token:
                    tokens.setdefault(key, []).append(admission.token)
                seen.append(
                    (
                        *("admit", admission.inserted, admission.state),
                        *(admission.attempts, admission.acquired, _view(await store.get(key))),
                    )
                )
            elif name in {"complete", "fail", "renew", "release"}:
                held = tokens.get(key, ["never-issued"])
                token = held[-1] if name == "fail" or arg else held[0]  # the first may be stale
                if name == "release":
                    done = await store.release(key, token, now=now)
                elif name == "renew":
                    done = await store.renew(key, token, now=now, lease=timedelta(seconds=15))
                elif name == "complete":
                    done = await store.complete(key, token, now=now)
                else:
                    retry = None if arg in {None, -1} else now + timedelta(seconds=arg)
                    done = await store.fail(
                        key, token, now=now, error="E", retry_at=retry, dead=arg == -1
                    )
                seen.append((name, done, _view(await store.get(key))))
            elif name == "due":
                claims = await store.claim_due(now=now, lease=timedelta(seconds=10), limit=arg)
                for claim in claims:
                    assert claim.token
                    tokens.setdefault(claim.record.key, []).append(claim.token)
                seen.append(("due", [_view(claim.record) for claim in claims]))
            elif name == "reset":
                seen.append(("reset", await store.reset_for_retry(key, now=now)))
            else:
                now += timedelta(seconds=arg)
        except UnknownCallbackError:
            seen.append((name, "unknown"))
    seen.append(("stats", await store.stats()))
    return seen


def _view(record: StoredCallback | None) -> object:
    if record is None:
        return None
    return (
        *(record.key, record.state, record.attempts, record.deliveries, record.last_error),
        *(record.next_attempt_at, record.lease_expires_at, record.processed_at, record.source),
        record.updated_at,
    )


@pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
def test_backends_agree_with_memory(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    base = f"sqlite:///{tmp_path}/" if backend == "sqlite" else None
    url = base or request.getfixturevalue(f"{backend}_url")

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(st.lists(_operation, max_size=25))
    def check(operations: list[tuple[str, str, Any]]) -> None:
        namespace = f"h_{uuid.uuid4().hex[:16]}"
        where = f"{url}{namespace}.db" if base else url

        async def both() -> tuple[list[object], list[object]]:
            async with MemoryStore() as model, open_store(where, namespace=namespace) as real:
                return await _replay(model, operations), await _replay(real, operations)

        expected, actual = asyncio.run(both())
        assert actual == expected

    check()
