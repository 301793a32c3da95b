"""The clock: the one ``utc_now`` every module and the test kit share."""

from __future__ import annotations

from datetime import datetime, timezone

from runflow_callbacks.errors import ConfigurationError

__all__ = ["aware", "utc_now"]


def utc_now() -> datetime:
    """The current time in UTC (the default ``clock``)."""
    return datetime.now(timezone.utc)


def aware(moment: datetime, *, name: str = "now") -> datetime:
    """``moment`` in UTC; a naive datetime is a caller error (its zone would be a guess)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ConfigurationError(f"{name} must be a timezone-aware datetime")
    return moment.astimezone(timezone.utc)
