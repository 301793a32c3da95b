"""The state machine shared by the backends that decide in Python (memory, SQLite).

Every backend also keeps a *due time* per callback, which ``claim_due`` compares with ``now``:
``received_at`` when recorded, ``now`` when reset, the lease expiry while processing,
``retry_at`` (or ``now``) when failed, and none once processed or dead.

Redis (Lua) and PostgreSQL (SQL) encode the same rules in their own language; the shared test
suite checks that all four agree.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

    from runflow_callbacks.stores import State

__all__ = ["can_claim", "new_token", "resettable"]


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
