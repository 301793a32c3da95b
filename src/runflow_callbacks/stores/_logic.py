"""The state machine shared by the backends that decide in Python (memory, SQLite).

Every backend also keeps a *due time* per callback, which ``claim_due`` compares with ``now``:
``received_at`` when recorded, ``now`` when reset, the lease expiry while processing,
``retry_at`` (or ``now``) when failed, and none once processed or dead.

Redis (Lua) and PostgreSQL (SQL) encode the same rules in their own language; the shared test
suite checks that all four agree.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from runflow_callbacks.stores import State, StoredCallback

__all__ = [
    "as_failed",
    "as_processed",
    "can_claim",
    "from_us",
    "new_token",
    "record_from_row",
    "resettable",
    "to_us",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_us(moment: datetime) -> int:
    """A UTC datetime as integer microseconds since the epoch (exact and sortable)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_us(value: int | bytes) -> datetime:
    """The inverse of :func:`to_us` (Redis hands the number back as bytes)."""
    return _EPOCH + timedelta(microseconds=int(value))


def can_claim(state: State, lease_expires_at: datetime | None, now: datetime) -> bool:
    """``claim`` succeeds on received and failed callbacks, and on expired leases."""
    if state in {"received", "failed"}:
        return True
    return state == "processing" and (lease_expires_at is None or lease_expires_at <= now)


def resettable(state: State, lease_expires_at: datetime | None, now: datetime) -> bool:
    """``reset_for_retry`` leaves processed callbacks and live leases alone."""
    if state == "processed":
        return False
    return state != "processing" or lease_expires_at is None or lease_expires_at <= now


def new_token() -> str:
    """A fencing token: unguessable, so a stale holder can never forge a newer one."""
    return secrets.token_hex(16)


def record_from_row(row: Any, moment: Callable[[Any], datetime | None]) -> StoredCallback:
    """Build a record from a SQL row (``row["column"]``); ``moment`` converts time columns."""
    from runflow_callbacks.stores import StoredCallback  # noqa: PLC0415 - the package imports us

    received_at, updated_at = moment(row["received_at"]), moment(row["updated_at"])
    assert received_at is not None
    assert updated_at is not None
    return StoredCallback(
        key=row["key"],
        kind=row["kind"],
        subject_id=row["subject_id"],
        event=row["event"],
        body=bytes(row["body"]),
        headers=json.loads(row["headers"]),
        secret_id=row["secret_id"],
        secret_label=row["secret_label"],
        request_id=row["request_id"],
        received_at=received_at,
        source=row["source"],
        state=row["state"],
        attempts=row["attempts"],
        deliveries=row["deliveries"],
        last_error=row["last_error"],
        next_attempt_at=moment(row["next_attempt_at"]),
        lease_expires_at=moment(row["lease_expires_at"]),
        processed_at=moment(row["processed_at"]),
        updated_at=updated_at,
    )


def as_processed(record: StoredCallback, now: datetime) -> StoredCallback:
    """``record`` as ``complete`` leaves it."""
    return dataclasses.replace(
        record,
        state="processed",
        processed_at=now,
        lease_expires_at=None,
        next_attempt_at=None,
        updated_at=now,
    )


def as_failed(
    record: StoredCallback, *, now: datetime, error: str, retry_at: datetime | None, dead: bool
) -> StoredCallback:
    """``record`` as ``fail`` leaves it."""
    return dataclasses.replace(
        record,
        state="dead" if dead else "failed",
        last_error=error,
        next_attempt_at=None if dead else retry_at,
        lease_expires_at=None,
        updated_at=now,
    )
