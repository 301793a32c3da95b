"""Write callback payload bytes the way Runflow writes them.

Runflow serializes the envelope with Python's ``json.dumps`` defaults (``", "`` and ``": "``
separators, ASCII escapes), in the field order ``event, run_id|batch_id, status, output,
duration_ms, created_at, completed_at, metadata``, with datetimes from ``isoformat()`` (UTC as
``+00:00``, never ``Z``). Use this only to *produce* bytes (tests, the fake Runflow); a receiver
verifies the bytes it got and never re-serializes them.

>>> from datetime import datetime, timezone
>>> dumps_payload({"status": "succeeded", "event": "run.completed",
...                "created_at": datetime(2026, 5, 6, 10, tzinfo=timezone.utc)})
b'{"event": "run.completed", "status": "succeeded", "created_at": "2026-05-06T10:00:00+00:00"}'
"""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from pydantic import BaseModel

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["FIELD_ORDER", "dumps_payload", "payload_to_dict"]

FIELD_ORDER: Final = (
    "event",
    "run_id",
    "batch_id",
    "status",
    "output",
    "duration_ms",
    "created_at",
    "completed_at",
    "metadata",
)


def _default(value: object) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="python", exclude_unset=True)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def payload_to_dict(payload: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    """The envelope as a dict in Runflow's field order (known fields first, then the rest).

    A model contributes the fields that were set when it was parsed or built, so an older
    payload without ``event``/``status`` stays without them.
    """
    data = (
        payload.model_dump(mode="python", exclude_unset=True)
        if isinstance(payload, BaseModel)
        else dict(payload)
    )
    ordered: dict[str, Any] = {name: data.pop(name) for name in FIELD_ORDER if name in data}
    ordered.update(data)
    return ordered


def dumps_payload(payload: BaseModel | Mapping[str, Any]) -> bytes:
    """Serialize a payload (model or mapping) to the bytes Runflow would send."""
    return json.dumps(payload_to_dict(payload), default=_default).encode("utf-8")
