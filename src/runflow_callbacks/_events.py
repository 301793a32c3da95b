"""The callback events of the Runflow spec, as plain strings (standard library only).

:mod:`runflow_callbacks.models` re-exports ``RUN_EVENTS`` and ``BATCH_EVENTS``; they are
defined here so that the command line can offer them (``send --event``) without importing
pydantic.
"""

from __future__ import annotations

from typing import Final

__all__ = ["BATCH_EVENTS", "EVENTS", "RUN_EVENTS"]

RUN_EVENTS: Final = ("run.completed", "run.failed", "run.cancelled", "run.partial_succeeded")
BATCH_EVENTS: Final = (
    "batch.succeeded",
    "batch.failed",
    "batch.cancelled",
    "batch.partial_succeeded",
)
#: Every event of the spec, runs first (``runflow_callbacks.testing.EVENTS``).
EVENTS: Final = (*RUN_EVENTS, *BATCH_EVENTS)
