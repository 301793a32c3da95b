"""The state machine of a stored callback, shared by all four backends.

Memory and SQLite decide in Python with these helpers; Redis (Lua) and PostgreSQL (SQL) encode
the same rules in their own language, and the shared test suite (a model test among them)
checks that all four agree with :class:`~runflow_callbacks.stores.memory.MemoryStore`.

The moves (``claim`` and ``claim_due`` also take over a ``processing`` callback whose lease
expired: its holder crashed):

- new key: ``record`` → ``received``; ``record_and_claim`` → ``received``, then as ``claim``;
- ``received``/``failed``/``unhandled`` → ``processing``: ``claim`` (one more attempt);
- ``processing`` → ``processed`` (``complete``), ``failed``/``dead`` (``fail``) or
  ``unhandled`` (``release``: no handler takes the event; the attempt is given back);
- ``unhandled`` → ``received`` (due ``now``, attempts kept): a new arrival through
  ``record_and_claim``, which then claims it when asked to (``record`` only counts it);
- anything but ``processed`` or a live lease → ``received`` with zero attempts, due ``now``:
  ``reset_for_retry``; with ``force``, ``processed`` → ``received`` too, attempts kept;
- ``processed``/``dead`` → the same state as a tombstone (no body, no headers, ``pruned_at``
  set): ``prune``, which later removes tombstones altogether. A tombstone is never reset.

Every backend also keeps a *due time* per callback, which ``claim_due`` compares with ``now``:
``received_at`` when recorded, ``now`` when reset or woken from ``unhandled``, the lease expiry
while processing, ``retry_at`` (or ``now``) when failed, and none once processed, dead or
unhandled (nothing would change by retrying an unhandled callback until a handler exists, so
the inbox worker must not spin on it).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final

from runflow_callbacks.stores import StoredCallback, aware

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from runflow_callbacks.stores import IncomingCallback, State

__all__ = [
    "CLAIMABLE",
    "as_claimed",
    "as_delivered",
    "as_failed",
    "as_processed",
    "as_pruned",
    "as_released",
    "as_reset",
    "as_woken",
    "can_claim",
    "expired_tombstone",
    "from_us",
    "listed",
    "new_record",
    "new_token",
    "prunable",
    "record_from_row",
    "resettable",
    "to_us",
]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: States ``claim`` takes whatever the lease: no run is in progress.
CLAIMABLE: Final[frozenset[State]] = frozenset({"received", "failed", "unhandled"})


def to_us(moment: datetime) -> int:
    """A UTC datetime as integer microseconds since the epoch (exact and sortable)."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_us(value: int | bytes) -> datetime:
    """The inverse of :func:`to_us` (Redis hands the number back as bytes)."""
    return _EPOCH + timedelta(microseconds=int(value))


def can_claim(state: State, lease_expires_at: datetime | None, now: datetime) -> bool:
    """``claim`` succeeds on received, failed and unhandled callbacks, and on expired leases.

    ``claim_due`` is narrower: it only sees callbacks with a due time, so never unhandled ones.
    """
    if state in CLAIMABLE:
        return True
    return state == "processing" and (lease_expires_at is None or lease_expires_at <= now)


def resettable(
    state: State,
    lease_expires_at: datetime | None,
    now: datetime,
    *,
    force: bool = False,
    pruned: bool = False,
) -> bool:
    """``reset_for_retry`` leaves live leases and tombstones alone, and processed callbacks
    unless forced."""
    if pruned or (state == "processed" and not force):
        return False
    return state != "processing" or lease_expires_at is None or lease_expires_at <= now


def listed(
    record: StoredCallback,
    *,
    state: State | None,
    event: str | None,
    since: datetime | None,
    until: datetime | None,
) -> bool:
    """Whether ``list_callbacks`` with these filters shows ``record``."""
    return (
        (state is None or record.state == state)
        and (event is None or record.event == event)
        and (since is None or record.received_at >= since)
        and (until is None or record.received_at < until)
    )


def prunable(record: StoredCallback, *, before: datetime, states: Collection[State]) -> bool:
    """Whether ``prune`` makes a tombstone of ``record`` (finished, updated before ``before``)."""
    return record.pruned_at is None and record.state in states and record.updated_at < before


def expired_tombstone(record: StoredCallback, *, tombstones_before: datetime | None) -> bool:
    """Whether ``prune`` removes ``record``: a tombstone last updated before the horizon."""
    return (
        tombstones_before is not None
        and record.pruned_at is not None
        and record.updated_at < tombstones_before
    )


def new_token() -> str:
    """A fencing token: unguessable, so a stale holder can never forge a newer one."""
    return secrets.token_hex(16)


def _same(value: Any) -> Any:
    return value


def record_from_row(
    row: Any,
    moment: Callable[[Any], datetime | None],
    text: Callable[[Any], str | None] = _same,
) -> StoredCallback:
    """Build a record from a SQL row (``row["column"]``).

    ``moment`` converts time columns; ``text`` the columns that may hold any string (the key,
    ids, event, labels and ``last_error``), which a backend may keep escaped (see ``_text``).
    """
    received_at, updated_at = moment(row["received_at"]), moment(row["updated_at"])
    assert received_at is not None
    assert updated_at is not None
    key, kind = text(row["key"]), text(row["kind"])
    assert key is not None
    assert kind is not None
    return StoredCallback(
        key=key,
        kind=kind,
        subject_id=text(row["subject_id"]),
        event=text(row["event"]),
        body=bytes(row["body"]),
        headers=json.loads(row["headers"]),
        secret_id=text(row["secret_id"]),
        secret_label=text(row["secret_label"]),
        request_id=text(row["request_id"]),
        received_at=received_at,
        source=row["source"],
        state=row["state"],
        attempts=row["attempts"],
        deliveries=row["deliveries"],
        last_error=text(row["last_error"]),
        next_attempt_at=moment(row["next_attempt_at"]),
        lease_expires_at=moment(row["lease_expires_at"]),
        processed_at=moment(row["processed_at"]),
        updated_at=updated_at,
        pruned_at=moment(row["pruned_at"]),
    )


def new_record(incoming: IncomingCallback) -> StoredCallback:
    """The record ``record`` stores for a new key: ``received``, due at ``received_at``.

    A delivery counts once; a callback first read back by reconciliation has no delivery yet.
    """
    received_at = aware(incoming.received_at, name="received_at")
    return StoredCallback(
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


def as_delivered(record: StoredCallback, incoming: IncomingCallback) -> StoredCallback:
    """``record`` after a duplicate of it arrived: a delivery counts, reconciliation does not.

    The stored body and headers never change: the first bytes recorded are the ones kept.
    """
    if incoming.source != "delivery":
        return record
    return dataclasses.replace(
        record,
        deliveries=record.deliveries + 1,
        updated_at=aware(incoming.received_at, name="received_at"),
    )


def as_woken(record: StoredCallback, now: datetime) -> StoredCallback:
    """An ``unhandled`` record made ``received`` (due ``now``) by a new arrival; others as is.

    Its attempts stay: ``release`` already gave back the claim that found no handler.
    """
    if record.state != "unhandled":
        return record
    return dataclasses.replace(record, state="received", updated_at=now)


def as_claimed(record: StoredCallback, now: datetime, lease: timedelta) -> StoredCallback:
    """``record`` as a successful claim leaves it: one more attempt, leased until now + lease."""
    return dataclasses.replace(
        record,
        state="processing",
        attempts=record.attempts + 1,
        lease_expires_at=now + lease,
        updated_at=now,
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


def as_released(record: StoredCallback, now: datetime) -> StoredCallback:
    """``record`` as ``release`` leaves it: ``unhandled``, with no lease and no due time.

    The claim is given back, so it does not count as an attempt (never below zero).
    """
    return dataclasses.replace(
        record,
        state="unhandled",
        attempts=max(record.attempts - 1, 0),
        next_attempt_at=None,
        lease_expires_at=None,
        updated_at=now,
    )


def as_reset(record: StoredCallback, now: datetime) -> StoredCallback:
    """``record`` as ``reset_for_retry`` leaves it: ``received``, due ``now``, with zero
    attempts, or its attempts kept when it was processed (a forced re-run is one more)."""
    return dataclasses.replace(
        record,
        state="received",
        attempts=record.attempts if record.state == "processed" else 0,
        next_attempt_at=None,
        lease_expires_at=None,
        processed_at=None,
        updated_at=now,
    )


def as_pruned(record: StoredCallback, now: datetime) -> StoredCallback:
    """``record`` as ``prune`` leaves it: a tombstone, without body or headers."""
    return dataclasses.replace(record, body=b"", headers={}, pruned_at=now)
