"""An in-memory store for tests and single-process experiments (nothing survives a restart)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from runflow_callbacks.stores import (
    Claim,
    Recorded,
    StoreBase,
    StoredCallback,
    StoreStats,
    UnknownCallbackError,
    aware,
    check_lease,
    check_limit,
    check_state,
)
from runflow_callbacks.stores._logic import (
    as_failed,
    as_processed,
    can_claim,
    new_token,
    resettable,
)

if TYPE_CHECKING:
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
        existing = self._records.get(incoming.key)
        if existing is not None:
            if incoming.source == "delivery":
                existing = dataclasses.replace(
                    existing,
                    deliveries=existing.deliveries + 1,
                    updated_at=aware(incoming.received_at),
                )
                self._records[incoming.key] = existing
            return Recorded(existing, inserted=False)
        received_at = aware(incoming.received_at)
        record = StoredCallback(
            key=incoming.key,
            kind=incoming.kind,
            subject_id=incoming.subject_id,
            event=incoming.event,
            body=bytes(incoming.body),
            headers=dict(incoming.headers),
            secret_id=incoming.secret_id,
            secret_label=incoming.secret_label,
            request_id=incoming.request_id,
            received_at=received_at,
            source=incoming.source,
            state="received",
            attempts=0,
            deliveries=1 if incoming.source == "delivery" else 0,
            last_error=None,
            next_attempt_at=None,
            lease_expires_at=None,
            processed_at=None,
            updated_at=received_at,
        )
        self._records[incoming.key] = record
        self._due[incoming.key] = received_at
        return Recorded(record, inserted=True)

    def _take(self, record: StoredCallback, now: datetime, lease: timedelta) -> Claim:
        token = new_token()
        taken = dataclasses.replace(
            record,
            state="processing",
            attempts=record.attempts + 1,
            lease_expires_at=now + lease,
            updated_at=now,
        )
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
        self, *, limit: int | None = None, state: State | None = None
    ) -> list[StoredCallback]:
        self._check_open()
        check_limit(limit)
        check_state(state)
        await asyncio.sleep(0)
        records = sorted(
            (r for r in self._records.values() if state is None or r.state == state),
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
            reconciled=sum(1 for record in records if record.source == "reconcile"),
            rejected=self._rejected,
        )

    async def note_rejected(self, count: int = 1) -> None:
        self._check_open()
        check_limit(count, name="count")
        self._rejected += count

    async def reset_for_retry(self, key: str, *, now: datetime) -> bool:
        self._check_open()
        now = aware(now)
        await asyncio.sleep(0)
        record = self._get(key)
        if not resettable(record.state, record.lease_expires_at, now):
            return False
        self._tokens.pop(key, None)
        self._due[key] = now
        self._records[key] = dataclasses.replace(
            record,
            state="received",
            attempts=0,
            next_attempt_at=None,
            lease_expires_at=None,
            updated_at=now,
        )
        return True

    async def close(self) -> None:
        self._closed = True
