"""Retention, replay and kept rejected requests: one suite for every backend.

``prune`` makes tombstones that keep deduplicating, ``list_callbacks`` filters by event and
time, ``reset_for_retry(force=True)`` re-runs a processed callback as one more attempt, and
``keep_rejected``/``list_rejected``/``get_rejected``/``mark_replayed`` keep the newest rejected
requests. Memory, SQLite, Redis and PostgreSQL must answer alike (real servers for the last
two).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.stores import (
    CallbackStore,
    IncomingCallback,
    Pruned,
    RejectedRequest,
    UnknownCallbackError,
    open_store,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from runflow_callbacks.stores import State

T0 = datetime(2026, 5, 6, 10, 0, 0, 123456, tzinfo=timezone.utc)
LEASE = timedelta(seconds=30)
DAY = timedelta(days=1)
BODY = b'{"event": "batch.succeeded", "odd": "\xff\x00"}'


def incoming(
    key: str, *, at: datetime = T0, event: str = "batch.succeeded", body: bytes = BODY
) -> IncomingCallback:
    return IncomingCallback(
        key=key,
        kind="batch",
        subject_id="b1",
        event=event,
        body=body,
        headers={"Runflow-Signature": "ab" * 32, "Runflow-Request-Id": "req-1"},
        secret_id="sec-1",
        secret_label="primary",
        request_id="req-1",
        received_at=at,
    )


@pytest.fixture
async def opener(store_url: str, namespace: str) -> AsyncIterator[Callable[[], CallbackStore]]:
    """Opens stores on one backend and namespace (the same object for memory://)."""
    opened: list[CallbackStore] = []
    shared = open_store(store_url, namespace=namespace) if store_url == "memory://" else None

    def factory() -> CallbackStore:
        store = shared or open_store(store_url, namespace=namespace)
        opened.append(store)
        return store

    yield factory
    for store in {id(store): store for store in opened}.values():
        await store.close()


@pytest.fixture
def store(opener: Callable[[], CallbackStore]) -> CallbackStore:
    return opener()


async def finish(
    store: CallbackStore, key: str, *, at: datetime, state: State = "processed"
) -> None:
    """Record ``key`` at ``at`` and leave it in ``state`` (processed, failed or dead) at ``at``."""
    admission = await store.record_and_claim(incoming(key, at=at), now=at, lease=LEASE)
    assert admission.token is not None
    if state == "processed":
        assert await store.complete(key, admission.token, now=at)
    else:
        assert await store.fail(
            key, admission.token, now=at, error="boom", retry_at=None, dead=state == "dead"
        )


class TestPrune:
    async def test_prune_makes_tombstones_of_old_finished_callbacks_only(
        self, store: CallbackStore
    ) -> None:
        await finish(store, "old-processed", at=T0)
        await finish(store, "old-dead", at=T0, state="dead")
        await finish(store, "old-failed", at=T0, state="failed")
        await store.record(incoming("old-received", at=T0))
        await finish(store, "new-processed", at=T0 + 10 * DAY)
        before = await store.get("old-processed")
        assert before is not None

        now = T0 + 20 * DAY
        result = await store.prune(before=T0 + 5 * DAY, now=now)

        assert result == Pruned(pruned=2, removed=0)
        tombstone = await store.get("old-processed")
        assert tombstone is not None
        assert tombstone.pruned
        assert tombstone.pruned_at == now
        assert (tombstone.body, dict(tombstone.headers)) == (b"", {})
        # Everything but the body and headers is kept: key, state, counts and times.
        assert (tombstone.state, tombstone.attempts, tombstone.deliveries) == ("processed", 1, 1)
        assert (tombstone.received_at, tombstone.processed_at, tombstone.updated_at) == (
            before.received_at,
            before.processed_at,
            before.updated_at,
        )
        dead = await store.get("old-dead")
        assert dead is not None
        assert (dead.state, dead.pruned, dead.last_error) == ("dead", True, "boom")
        for key in ("old-failed", "old-received", "new-processed"):
            record = await store.get(key)
            assert record is not None
            assert not record.pruned
            assert record.body == BODY
        assert (await store.stats()).processed == 2  # tombstones still count by state

    async def test_a_tombstone_is_still_a_duplicate_and_never_runs_again(
        self, opener: Callable[[], CallbackStore]
    ) -> None:
        store = opener()
        await finish(store, "k", at=T0)
        await store.prune(before=T0 + DAY, now=T0 + 2 * DAY)
        again = opener()  # another connection: the tombstone is durable
        admission = await again.record_and_claim(
            incoming("k", at=T0 + 3 * DAY), now=T0 + 3 * DAY, lease=LEASE
        )
        assert (admission.inserted, admission.state, admission.token) == (False, "processed", None)
        record = await again.get("k")
        assert record is not None
        assert (record.deliveries, record.body, record.pruned) == (2, b"", True)
        assert not await again.reset_for_retry("k", now=T0 + 3 * DAY)
        assert not await again.reset_for_retry("k", now=T0 + 3 * DAY, force=True)

    async def test_a_dead_tombstone_is_not_reset(self, store: CallbackStore) -> None:
        await finish(store, "k", at=T0, state="dead")
        await store.prune(before=T0 + DAY, now=T0 + DAY)
        assert not await store.reset_for_retry("k", now=T0 + DAY)
        record = await store.get("k")
        assert record is not None
        assert record.state == "dead"

    async def test_prune_takes_only_the_states_asked_for(self, store: CallbackStore) -> None:
        await finish(store, "p", at=T0)
        await finish(store, "d", at=T0, state="dead")
        assert await store.prune(before=T0 + DAY, now=T0 + DAY, states=["dead"]) == Pruned(1, 0)
        processed, dead = await store.get("p"), await store.get("d")
        assert processed is not None
        assert dead is not None
        assert (processed.pruned, dead.pruned) == (False, True)
        assert await store.prune(before=T0 + DAY, now=T0 + DAY) == Pruned(1, 0)
        assert await store.prune(before=T0 + DAY, now=T0 + DAY) == Pruned(0, 0)  # idempotent

    @pytest.mark.parametrize("states", [["failed"], ["received"], [], "processed"])
    async def test_only_finished_states_can_be_pruned(
        self, store: CallbackStore, states: list[State]
    ) -> None:
        with pytest.raises(ConfigurationError):
            await store.prune(before=T0, now=T0, states=states)

    async def test_naive_times_are_refused(self, store: CallbackStore) -> None:
        with pytest.raises(ConfigurationError):
            await store.prune(before=T0.replace(tzinfo=None), now=T0)

    async def test_tombstones_go_after_the_longer_horizon(self, store: CallbackStore) -> None:
        await finish(store, "very-old", at=T0)
        await finish(store, "old", at=T0 + 30 * DAY)
        await finish(store, "kept", at=T0 + 60 * DAY)
        now = T0 + 61 * DAY
        # One call: both become tombstones; none removed (a callback pruned now stays).
        assert await store.prune(before=now, now=now, tombstones_before=now - 10 * DAY) == Pruned(
            pruned=3, removed=0
        )
        # Later: the tombstones last updated before the horizon go, the others stay.
        later = now + DAY
        assert await store.prune(
            before=later - DAY, now=later, tombstones_before=T0 + 40 * DAY
        ) == Pruned(pruned=0, removed=2)
        assert await store.get("very-old") is None
        assert await store.get("old") is None
        kept = await store.get("kept")
        assert kept is not None
        assert kept.pruned
        assert [record.key for record in await store.list_callbacks()] == ["kept"]
        stats = await store.stats()
        assert (stats.received, stats.processed) == (1, 1)
        # A delivery of a removed callback is new again: the horizon is the limit.
        admission = await store.record_and_claim(incoming("old", at=later), now=later, lease=None)
        assert admission.inserted

    async def test_a_redelivered_tombstone_lives_on(self, store: CallbackStore) -> None:
        await finish(store, "k", at=T0)
        await store.prune(before=T0 + DAY, now=T0 + DAY)
        await store.record(incoming("k", at=T0 + 50 * DAY))  # updated_at moves on
        result = await store.prune(
            before=T0 + 60 * DAY, now=T0 + 60 * DAY, tombstones_before=T0 + 40 * DAY
        )
        assert result == Pruned(0, 0)
        assert await store.get("k") is not None


class TestListFilters:
    async def test_event_and_time_filters(self, store: CallbackStore) -> None:
        await store.record(incoming("a", at=T0, event="batch.succeeded"))
        await store.record(incoming("b", at=T0 + DAY, event="batch.failed"))
        await store.record(incoming("c", at=T0 + 2 * DAY, event="batch.succeeded"))
        await finish(store, "d", at=T0 + 3 * DAY)

        async def keys(**filters: object) -> list[str]:
            return [record.key for record in await store.list_callbacks(**filters)]  # type: ignore[arg-type]

        assert await keys(event="batch.succeeded") == ["a", "c", "d"]
        assert await keys(event="batch.failed") == ["b"]
        assert await keys(event="run.completed") == []
        assert await keys(since=T0 + DAY) == ["b", "c", "d"]
        assert await keys(until=T0 + 2 * DAY) == ["a", "b"]  # until is exclusive
        assert await keys(since=T0 + DAY, until=T0 + 3 * DAY) == ["b", "c"]
        assert await keys(event="batch.succeeded", state="received", since=T0 + DAY) == ["c"]
        assert await keys(event="batch.succeeded", limit=2) == ["a", "c"]
        other_zone = timezone(timedelta(hours=5))
        assert await keys(since=(T0 + DAY).astimezone(other_zone)) == ["b", "c", "d"]

    async def test_bad_windows_are_refused(self, store: CallbackStore) -> None:
        with pytest.raises(ConfigurationError):
            await store.list_callbacks(since=T0.replace(tzinfo=None))
        with pytest.raises(ConfigurationError):
            await store.list_callbacks(since=T0 + DAY, until=T0)


class TestForcedRetry:
    async def test_force_re_runs_a_processed_callback_as_one_more_attempt(
        self, store: CallbackStore
    ) -> None:
        await finish(store, "k", at=T0)
        later = T0 + DAY
        assert not await store.reset_for_retry("k", now=later)
        assert await store.reset_for_retry("k", now=later, force=True)
        record = await store.get("k")
        assert record is not None
        assert (record.state, record.attempts, record.processed_at) == ("received", 1, None)
        assert record.body == BODY
        [claim] = await store.claim_due(now=later, lease=LEASE, limit=10)
        assert claim.token is not None
        assert (claim.record.key, claim.record.attempts) == ("k", 2)
        assert await store.complete("k", claim.token, now=later)
        done = await store.get("k")
        assert done is not None
        assert (done.state, done.attempts, done.processed_at) == ("processed", 2, later)

    async def test_force_still_respects_a_live_lease(self, store: CallbackStore) -> None:
        admission = await store.record_and_claim(incoming("k"), now=T0, lease=LEASE)
        assert admission.token is not None
        assert not await store.reset_for_retry("k", now=T0, force=True)
        assert await store.reset_for_retry("k", now=T0 + 2 * LEASE, force=True)  # expired

    async def test_force_on_a_failed_callback_resets_its_tries(self, store: CallbackStore) -> None:
        await finish(store, "k", at=T0, state="dead")
        assert await store.reset_for_retry("k", now=T0, force=True)
        record = await store.get("k")
        assert record is not None
        assert (record.state, record.attempts) == ("received", 0)

    async def test_force_on_an_unknown_key_raises(self, store: CallbackStore) -> None:
        with pytest.raises(UnknownCallbackError):
            await store.reset_for_retry("nope", now=T0, force=True)


def rejected(number: int, *, body: bytes = b"", body_bytes: int | None = None) -> RejectedRequest:
    body = body or f'{{"n": {number}, "odd": "\\u00ff"}}'.encode() + b"\xff"
    return RejectedRequest(
        received_at=T0 + timedelta(seconds=number),
        reason="signature_mismatch",
        path="/callbacks/runflow",
        headers={"runflow-signature": "cd" * 32, "runflow-request-id": f"req-{number}"},
        body=body,
        body_bytes=len(body) if body_bytes is None else body_bytes,
    )


class TestRejected:
    async def test_kept_requests_come_back_exactly_newest_first(
        self, opener: Callable[[], CallbackStore]
    ) -> None:
        store = opener()
        await store.keep_rejected([rejected(1), rejected(2)], keep=10)
        await store.keep_rejected([rejected(3, body=b"x" * 10, body_bytes=5000)], keep=10)
        kept = await opener().list_rejected()
        assert [request.headers["runflow-request-id"] for request in kept] == [
            "req-3",
            "req-2",
            "req-1",
        ]
        ids = [request.id for request in kept]
        assert all(isinstance(request_id, str) and request_id for request_id in ids)
        assert len(set(ids)) == 3
        newest, _, oldest = kept
        assert oldest == dataclasses.replace(rejected(1), id=oldest.id)
        assert (newest.body, newest.body_bytes, newest.truncated) == (b"x" * 10, 5000, True)
        assert not oldest.truncated
        assert oldest.received_at == T0 + timedelta(seconds=1)
        assert [request.id for request in await store.list_rejected(limit=2)] == ids[:2]
        assert "cdcd" not in repr(newest)

    async def test_only_the_newest_are_kept(self, store: CallbackStore) -> None:
        await store.keep_rejected([rejected(n) for n in range(1, 6)], keep=3)
        await store.keep_rejected([rejected(6)], keep=3)
        kept = await store.list_rejected()
        assert [r.headers["runflow-request-id"] for r in kept] == ["req-6", "req-5", "req-4"]
        await store.keep_rejected([], keep=1)
        [last] = await store.list_rejected()
        assert last.headers["runflow-request-id"] == "req-6"

    async def test_get_and_mark_replayed(self, opener: Callable[[], CallbackStore]) -> None:
        store = opener()
        await store.keep_rejected([rejected(1), rejected(2)], keep=10)
        first, second = await store.list_rejected()
        assert first.id is not None
        assert second.id is not None
        assert await store.get_rejected(first.id) == first
        assert await store.get_rejected("999999") is None
        assert await store.get_rejected("not an id") is None
        assert await store.mark_replayed(first.id, key="batch:b1:batch.succeeded", now=T0 + DAY)
        marked = await opener().get_rejected(first.id)
        assert marked is not None
        assert (marked.replayed_at, marked.replayed_key) == (T0 + DAY, "batch:b1:batch.succeeded")
        untouched = await store.get_rejected(second.id)
        assert untouched is not None
        assert (untouched.replayed_at, untouched.replayed_key) == (None, None)
        assert not await store.mark_replayed("999999", key="k", now=T0)

    async def test_ids_stay_unique_once_old_ones_are_dropped(self, store: CallbackStore) -> None:
        seen: set[str | None] = set()
        for number in range(4):
            await store.keep_rejected([rejected(number)], keep=1)
            [only] = await store.list_rejected()
            assert only.id not in seen
            seen.add(only.id)

    @pytest.mark.parametrize("keep", [0, -1])
    async def test_keep_must_be_positive(self, store: CallbackStore, keep: int) -> None:
        with pytest.raises(ConfigurationError):
            await store.keep_rejected([rejected(1)], keep=keep)

    async def test_callbacks_and_rejected_requests_do_not_mix(self, store: CallbackStore) -> None:
        await store.keep_rejected([rejected(1)], keep=5)
        await store.record(incoming("k"))
        assert [record.key for record in await store.list_callbacks()] == ["k"]
        assert len(await store.list_rejected()) == 1
        assert (await store.stats()).received == 1
