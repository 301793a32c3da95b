"""An in-memory store for tests and single-process experiments (nothing survives a restart)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from runflow_callbacks.stores import (
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
    check_prune,
    check_state,
    check_window,
)
from runflow_callbacks.stores._state import (
    as_claimed,
    as_delivered,
    as_failed,
    as_processed,
    as_pruned,
    as_released,
    as_reset,
    as_woken,
    can_claim,
    expired_tombstone,
    listed,
    new_record,
    new_token,
    prunable,
    resettable,
)

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence
    from datetime import datetime, timedelta

    from runflow_callbacks.stores import IncomingCallback, State

__all__ = ["MemoryStore"]


class MemoryStore(StoreBase):
    """A :class:`~runflow_callbacks.stores.CallbackStore` held in a dict.

    Safe for concurrent tasks of one event loop; not shared between processes. Use it in tests
    (``open_store("memory://")``).
    """

    def __init__(self) -> None:
        self._records: dict[str, StoredCallback] = {}
        self._tokens: dict[str, str] = {}
        self._due: dict[str, datetime] = {}
        self._rejected = 0
        self._kept: dict[str, RejectedRequest] = {}  # in id order
        self._last_id = 0
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this store is closed")

    def _get(self, key: str) -> StoredCallback:
        record = self._records.get(key)
        if record is None:
            raise UnknownCallbackError(key)
        return record

    async def record(self, incoming: IncomingCallback) -> Recorded:
        self._check_open()
        await asyncio.sleep(0)  # behave like the real backends: every call is a yield point
        return self._record(incoming)

    def _record(self, incoming: IncomingCallback) -> Recorded:
        existing = self._records.get(incoming.key)
        if existing is not None:
            existing = as_delivered(existing, incoming)
            self._records[incoming.key] = existing
            return Recorded(existing, inserted=False)
        record = new_record(incoming)
        self._records[incoming.key] = record
        self._due[incoming.key] = record.received_at
        return Recorded(record, inserted=True)

    async def record_and_claim(
        self, incoming: IncomingCallback, *, now: datetime, lease: timedelta | None
    ) -> Admission:
        self._check_open()
        now = aware(now)
        lease = None if lease is None else check_lease(lease)
        await asyncio.sleep(0)
        # No yield point from here on: the whole step is atomic, as on the other backends.
        recorded = self._record(incoming)
        record = recorded.record
        if record.state == "unhandled":
            record = as_woken(record, now)
            self._records[record.key] = record
            self._due[record.key] = now
        if lease is not None and can_claim(record.state, record.lease_expires_at, now):
            claim = self._take(record, now, lease)
            return Admission(
                inserted=recorded.inserted,
                state="processing",
                attempts=claim.record.attempts,
                token=claim.token,
            )
        return Admission(inserted=recorded.inserted, state=record.state, attempts=record.attempts)

    def _take(self, record: StoredCallback, now: datetime, lease: timedelta) -> Claim:
        token = new_token()
        taken = as_claimed(record, now, lease)
        self._records[record.key] = taken
        self._tokens[record.key] = token
        self._due[record.key] = now + lease
        return Claim(taken, token)

    async def claim(self, key: str, *, now: datetime, lease: timedelta) -> Claim:
        self._check_open()
        now, lease = aware(now), check_lease(lease)
        await asyncio.sleep(0)
        record = self._get(key)
        if not can_claim(record.state, record.lease_expires_at, now):
            return Claim(record)
        return self._take(record, now, lease)

    def _holds(self, key: str, token: str) -> StoredCallback | None:
        record = self._get(key)
        if record.state != "processing" or self._tokens.get(key) != token:
            return None
        return record

    async def renew(self, key: str, token: str, *, now: datetime, lease: timedelta) -> bool:
        self._check_open()
        now, lease = aware(now), check_lease(lease)
        await asyncio.sleep(0)
        record = self._holds(key, token)
        if record is None:
            return False
        self._due[key] = now + lease
        self._records[key] = dataclasses.replace(
            record, lease_expires_at=now + lease, updated_at=now
        )
        return True

    async def complete(self, key: str, token: str, *, now: datetime) -> bool:
        self._check_open()
        now = aware(now)
        await asyncio.sleep(0)
        record = self._holds(key, token)
        if record is None:
            return False
        del self._tokens[key]
        self._due.pop(key, None)
        self._records[key] = as_processed(record, now)
        return True

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
        self._check_open()
        now = aware(now)
        retry_at = None if retry_at is None or dead else aware(retry_at, name="retry_at")
        await asyncio.sleep(0)
        record = self._holds(key, token)
        if record is None:
            return False
        del self._tokens[key]
        if dead:
            self._due.pop(key, None)
        else:
            self._due[key] = now if retry_at is None else retry_at
        self._records[key] = as_failed(record, now=now, error=error, retry_at=retry_at, dead=dead)
        return True

    async def release(self, key: str, token: str, *, now: datetime) -> bool:
        self._check_open()
        now = aware(now)
        await asyncio.sleep(0)
        record = self._holds(key, token)
        if record is None:
            return False
        del self._tokens[key]
        self._due.pop(key, None)  # no due time: claim_due must not spin on it
        self._records[key] = as_released(record, now)
        return True

    async def claim_due(self, *, now: datetime, lease: timedelta, limit: int) -> list[Claim]:
        self._check_open()
        now, lease = aware(now), check_lease(lease)
        check_limit(limit)
        await asyncio.sleep(0)
        due = sorted((at, key) for key, at in self._due.items() if at <= now)
        return [self._take(self._records[key], now, lease) for _, key in due[:limit]]

    async def get(self, key: str) -> StoredCallback | None:
        self._check_open()
        await asyncio.sleep(0)
        return self._records.get(key)

    async def list_callbacks(
        self,
        *,
        limit: int | None = None,
        state: State | None = None,
        event: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[StoredCallback]:
        self._check_open()
        check_limit(limit)
        check_state(state)
        check_window(since, until)
        await asyncio.sleep(0)
        records = sorted(
            (
                record
                for record in self._records.values()
                if listed(record, state=state, event=event, since=since, until=until)
            ),
            key=lambda record: (record.received_at, record.key),
        )
        return records if limit is None else records[:limit]

    async def stats(self) -> StoreStats:
        self._check_open()
        await asyncio.sleep(0)
        records = list(self._records.values())

        def count(state: State) -> int:
            return sum(1 for record in records if record.state == state)

        return StoreStats(
            received=len(records),
            duplicates=sum(record.duplicates for record in records),
            pending=count("received"),
            processing=count("processing"),
            processed=count("processed"),
            failed=count("failed"),
            dead=count("dead"),
            unhandled=count("unhandled"),
            reconciled=sum(1 for record in records if record.source == "reconcile"),
            rejected=self._rejected,
        )

    async def note_rejected(self, count: int = 1) -> None:
        self._check_open()
        check_limit(count, name="count")
        self._rejected += count

    async def reset_for_retry(self, key: str, *, now: datetime, force: bool = False) -> bool:
        self._check_open()
        now = aware(now)
        await asyncio.sleep(0)
        record = self._get(key)
        if not resettable(
            record.state, record.lease_expires_at, now, force=force, pruned=record.pruned
        ):
            return False
        self._tokens.pop(key, None)
        self._due[key] = now
        self._records[key] = as_reset(record, now)
        return True

    async def prune(
        self,
        *,
        before: datetime,
        now: datetime,
        states: Collection[State] = PRUNABLE_STATES,
        tombstones_before: datetime | None = None,
    ) -> Pruned:
        self._check_open()
        before, now, chosen, tombstones_before = check_prune(before, now, states, tombstones_before)
        await asyncio.sleep(0)
        pruned = removed = 0
        for key, record in list(self._records.items()):
            if prunable(record, before=before, states=chosen):
                self._records[key] = as_pruned(record, now)
                pruned += 1
            elif expired_tombstone(record, tombstones_before=tombstones_before):
                del self._records[key]
                self._due.pop(key, None)
                removed += 1
        return Pruned(pruned=pruned, removed=removed)

    async def keep_rejected(self, requests: Sequence[RejectedRequest], *, keep: int) -> None:
        self._check_open()
        check_limit(keep, name="keep")
        await asyncio.sleep(0)
        for request in requests:
            self._last_id += 1
            request_id = str(self._last_id)
            self._kept[request_id] = dataclasses.replace(request, id=request_id)
        for request_id in list(self._kept)[: max(len(self._kept) - keep, 0)]:
            del self._kept[request_id]

    async def list_rejected(self, *, limit: int | None = None) -> list[RejectedRequest]:
        self._check_open()
        check_limit(limit)
        await asyncio.sleep(0)
        newest_first = list(reversed(self._kept.values()))
        return newest_first if limit is None else newest_first[:limit]

    async def get_rejected(self, request_id: str) -> RejectedRequest | None:
        self._check_open()
        await asyncio.sleep(0)
        return self._kept.get(request_id)

    async def mark_replayed(self, request_id: str, *, key: str, now: datetime) -> bool:
        self._check_open()
        now = aware(now)
        await asyncio.sleep(0)
        request = self._kept.get(request_id)
        if request is None:
            return False
        self._kept[request_id] = dataclasses.replace(request, replayed_at=now, replayed_key=key)
        return True

    async def ready(self) -> None:
        self._check_open()

    async def close(self) -> None:
        self._closed = True
