"""Realistic callback payloads for every event and status of the spec, with overridable fields.

>>> factory = PayloadFactory(seed=1)
>>> payload = factory.batch("batch.partial_succeeded", item_count=4)
>>> payload.status, payload.output.total, payload.output.succeeded + payload.output.failed
('partial_succeeded', 4, 4)
>>> factory.body(payload)[:35]
b'{"event": "batch.partial_succeeded"'

Ids are UUIDv7-like (the time bits come from the factory's clock), batch output counts always
agree with the items, succeeded items carry presigned-looking output URLs and failed ones an
``error`` object. The shapes Runflow leaves undocumented (batch items, the failure envelope)
are our realistic choice, documented on :meth:`PayloadFactory.batch_items` and
:meth:`PayloadFactory.run_output`. Bytes come from :func:`runflow_callbacks.wire.dumps_payload`,
so they are written exactly the way Runflow writes them.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.models import (
    BATCH_EVENTS,
    RUN_EVENTS,
    BatchCallbackPayload,
    CallbackPayload,
    RunCallbackPayload,
)
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "BATCH_EVENT_STATUS",
    "EVENTS",
    "RUN_EVENT_STATUS",
    "PayloadFactory",
    "batch_payload",
    "payload_for_event",
    "run_payload",
]

#: The terminal status each run event carries.
RUN_EVENT_STATUS: Final[Mapping[str, str]] = {
    "run.completed": "succeeded",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
    "run.partial_succeeded": "partial_succeeded",
}
#: The terminal status each batch event carries.
BATCH_EVENT_STATUS: Final[Mapping[str, str]] = {
    "batch.succeeded": "succeeded",
    "batch.failed": "failed",
    "batch.cancelled": "cancelled",
    "batch.partial_succeeded": "partial_succeeded",
}
#: Every event of the spec, runs first.
EVENTS: Final = (*RUN_EVENTS, *BATCH_EVENTS)

_STATUS_ALIASES: Final = {"canceled": "cancelled"}
_UNSET: Final[Any] = object()
_MODELS: Final = ("sdxl-turbo", "flux-schnell", "whisper-large-v3", "llama-3.1-8b")
_ERRORS: Final = (
    ("model_error", "the model raised an error while generating the output"),
    ("timeout", "the run exceeded its time limit"),
    ("invalid_input", "input 'prompt' must not be empty"),
)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _event_for_status(status: str, table: Mapping[str, str], kind: str) -> str:
    wanted = _STATUS_ALIASES.get(status, status)
    for event, event_status in table.items():
        if event_status == wanted:
            return event
    known = ", ".join(sorted(set(table.values())))
    raise ConfigurationError(f"no {kind} event has status {status!r} (known: {known})")


def _check_event(event: str, table: Mapping[str, str], kind: str) -> None:
    if event not in table:
        known = ", ".join(table)
        raise ConfigurationError(f"unknown {kind} event {event!r} (known: {known})")


class PayloadFactory:
    """Builds payload models for every event of the spec.

    ``clock`` gives the completion time of each payload (default: the current UTC time); ``seed``
    or ``rng`` makes ids, durations and outputs reproducible. Every field of the envelope can be
    overridden by keyword; extra keywords become extra (unknown) fields, as a newer Runflow
    might send.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = _utc_now,
        seed: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if rng is not None and seed is not None:
            raise ConfigurationError("pass either seed or rng, not both")
        self.clock = clock
        self.rng = rng if rng is not None else random.Random(seed)  # noqa: S311 - test data, not crypto

    # --- building blocks -------------------------------------------------------------------

    def uuid7(self, *, at: datetime | None = None) -> UUID:
        """A UUIDv7: 48 bits of Unix milliseconds (from ``at`` or the clock), then random bits."""
        moment = at if at is not None else self.clock()
        millis = int(moment.timestamp() * 1000) & ((1 << 48) - 1)
        rand_a = self.rng.getrandbits(12)
        rand_b = self.rng.getrandbits(62)
        value = (millis << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
        return UUID(int=value)

    def output_url(self, run_id: UUID, *, name: str = "output-0.png") -> str:
        """A presigned-looking URL of an output file (it expires, like Runflow's)."""
        signature = "%032x" % self.rng.getrandbits(128)  # noqa: UP031 - fixed-width hex
        return (
            f"https://outputs.runflow.io/{run_id}/{name}"
            f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature={signature}"
        )

    def error(self) -> dict[str, Any]:
        """A failure envelope (undocumented by Runflow; ours is ``{code, message}``)."""
        code, message = self.rng.choice(_ERRORS)
        return {"code": code, "message": message}

    def run_output(self, status: str, *, run_id: UUID) -> dict[str, Any] | None:
        """The ``output`` of a run in ``status``.

        ``succeeded``: ``{"model", "images": [{"url", "content_type", "width", "height"}]}``;
        ``failed``: ``{"error": {"code", "message"}}``; ``partial_succeeded``: images plus an
        ``errors`` list; ``cancelled``: None.
        """
        status = _STATUS_ALIASES.get(status, status)
        if status == "cancelled":
            return None
        if status == "failed":
            return {"error": self.error()}
        count = 2 if status == "partial_succeeded" else self.rng.randint(1, 3)
        images = [
            {
                "url": self.output_url(run_id, name=f"output-{i}.png"),
                "content_type": "image/png",
                "width": 1024,
                "height": 1024,
            }
            for i in range(count)
        ]
        output: dict[str, Any] = {"model": self.rng.choice(_MODELS), "images": images}
        if status == "partial_succeeded":
            output["errors"] = [self.error()]
        return output

    def batch_item(self, status: str, *, at: datetime | None = None) -> dict[str, Any]:
        """One batch item: ``{"run_id", "status", "output", "error"}``.

        A succeeded item has an output with presigned URLs and a null error; a failed one a null
        output and an ``{code, message}`` error; a cancelled one neither.
        """
        status = _STATUS_ALIASES.get(status, status)
        run_id = self.uuid7(at=at)
        output = self.run_output(status, run_id=run_id) if status == "succeeded" else None
        error = self.error() if status == "failed" else None
        return {"run_id": str(run_id), "status": status, "output": output, "error": error}

    def batch_items(self, status: str, *, count: int = 3) -> list[dict[str, Any]]:
        """``count`` items consistent with a batch in ``status``.

        ``succeeded``: all succeeded; ``failed``: all failed; ``partial_succeeded``: at least
        one succeeded and one failed; ``cancelled``: the first item succeeded, the rest were
        cancelled (a batch is cancelled while it runs).
        """
        status = _STATUS_ALIASES.get(status, status)
        if count < 0:
            raise ConfigurationError("item_count must not be negative")
        if status == "partial_succeeded":
            if count < 2:
                raise ConfigurationError("a partially succeeded batch needs at least 2 items")
            statuses = ["succeeded", "failed"] + [
                self.rng.choice(("succeeded", "failed")) for _ in range(count - 2)
            ]
        elif status == "cancelled":
            statuses = ["succeeded"] + ["cancelled"] * (count - 1) if count else []
        elif status in {"succeeded", "failed"}:
            statuses = [status] * count
        else:
            statuses = ["succeeded"] * count
        return [self.batch_item(item_status) for item_status in statuses]

    @staticmethod
    def batch_output(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """``{items, succeeded, failed, cancelled, total}`` with counts taken from the items."""

        def count(wanted: str) -> int:
            statuses = (str(item.get("status")) for item in items)
            return sum(1 for status in statuses if _STATUS_ALIASES.get(status, status) == wanted)

        return {
            "items": [dict(item) for item in items],
            "succeeded": count("succeeded"),
            "failed": count("failed"),
            "cancelled": count("cancelled"),
            "total": len(items),
        }

    # --- envelopes -----------------------------------------------------------------------

    def _envelope(
        self,
        *,
        event: str | None,
        subject: tuple[str, UUID | str],
        status: str,
        output: Any,
        duration_ms: int | None,
        created_at: datetime | None,
        completed_at: datetime | None,
        metadata: Any,
        extra: Mapping[str, Any],
    ) -> dict[str, Any]:
        if duration_ms is None:
            duration_ms = (
                int((completed_at - created_at).total_seconds() * 1000)
                if created_at is not None and completed_at is not None
                else self.rng.randint(800, 120_000)
            )
        if completed_at is None:
            completed_at = (
                created_at + timedelta(milliseconds=duration_ms)
                if created_at is not None
                else self.clock()
            )
        if created_at is None:
            created_at = completed_at - timedelta(milliseconds=duration_ms)
        envelope: dict[str, Any] = {
            "event": event,
            subject[0]: str(subject[1]),
            "status": status,
            "output": output,
            "duration_ms": duration_ms,
            "created_at": created_at,
            "completed_at": completed_at,
            "metadata": metadata,
        }
        envelope.update(extra)
        return envelope

    def run(
        self,
        event: str | None = None,
        *,
        status: str | None = None,
        run_id: UUID | str | None = None,
        output: Any = _UNSET,
        duration_ms: int | None = None,
        created_at: datetime | None = None,
        completed_at: datetime | None = None,
        metadata: Any = None,
        **extra: Any,
    ) -> RunCallbackPayload:
        """A run callback. ``event`` defaults to ``run.completed`` (or follows ``status``)."""
        event, status = self._event_and_status(event, status, RUN_EVENT_STATUS, "run")
        subject = run_id if run_id is not None else self.uuid7()
        if output is _UNSET:
            output = self.run_output(status, run_id=UUID(str(subject)))
        envelope = self._envelope(
            event=event,
            subject=("run_id", subject),
            status=status,
            output=output,
            duration_ms=duration_ms,
            created_at=created_at,
            completed_at=completed_at,
            metadata=metadata,
            extra=extra,
        )
        return RunCallbackPayload.model_validate(envelope)

    def batch(
        self,
        event: str | None = None,
        *,
        status: str | None = None,
        batch_id: UUID | str | None = None,
        items: Sequence[Mapping[str, Any]] | None = None,
        item_count: int = 3,
        output: Any = _UNSET,
        duration_ms: int | None = None,
        created_at: datetime | None = None,
        completed_at: datetime | None = None,
        metadata: Any = None,
        **extra: Any,
    ) -> BatchCallbackPayload:
        """A batch callback. ``event`` defaults to ``batch.succeeded`` (or follows ``status``).

        ``items`` replaces the generated items (counts are recomputed from them); ``output``
        replaces the whole output verbatim (use it for inconsistent or null outputs).
        """
        event, status = self._event_and_status(event, status, BATCH_EVENT_STATUS, "batch")
        if output is _UNSET:
            chosen = items if items is not None else self.batch_items(status, count=item_count)
            output = self.batch_output(chosen)
        envelope = self._envelope(
            event=event,
            subject=("batch_id", batch_id if batch_id is not None else self.uuid7()),
            status=status,
            output=output,
            duration_ms=duration_ms,
            created_at=created_at,
            completed_at=completed_at,
            metadata=metadata,
            extra=extra,
        )
        return BatchCallbackPayload.model_validate(envelope)

    def for_event(self, event: str, **overrides: Any) -> CallbackPayload:
        """A payload for any event of the spec (``run.*`` or ``batch.*``)."""
        if event in RUN_EVENT_STATUS:
            return self.run(event, **overrides)
        if event in BATCH_EVENT_STATUS:
            return self.batch(event, **overrides)
        raise ConfigurationError(f"unknown event {event!r} (known: {', '.join(EVENTS)})")

    @staticmethod
    def body(payload: CallbackPayload | Mapping[str, Any]) -> bytes:
        """The bytes Runflow would send for ``payload``."""
        return dumps_payload(payload)

    @staticmethod
    def _event_and_status(
        event: str | None, status: str | None, table: Mapping[str, str], kind: str
    ) -> tuple[str, str]:
        if event is None:
            event = (
                _event_for_status(status, table, kind) if status is not None else next(iter(table))
            )
        _check_event(event, table, kind)
        return event, status if status is not None else table[event]


_DEFAULT = PayloadFactory()


def run_payload(event: str | None = None, **overrides: Any) -> RunCallbackPayload:
    """A realistic run callback from a shared factory; see :meth:`PayloadFactory.run`."""
    return _DEFAULT.run(event, **overrides)


def batch_payload(event: str | None = None, **overrides: Any) -> BatchCallbackPayload:
    """A realistic batch callback from a shared factory; see :meth:`PayloadFactory.batch`."""
    return _DEFAULT.batch(event, **overrides)


def payload_for_event(event: str, **overrides: Any) -> CallbackPayload:
    """A realistic payload for any event of the spec; see :meth:`PayloadFactory.for_event`."""
    return _DEFAULT.for_event(event, **overrides)
