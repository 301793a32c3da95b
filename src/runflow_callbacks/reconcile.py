"""Recover callbacks a receiver missed, from Runflow's delivery history.

Runflow gives up on a callback after a few failed attempts. Its delivery history keeps the
exact bytes it sent (``payload_bytes``), so :func:`reconcile` reads the history of the batches
and runs you name and feeds every payload the store has not processed yet to the processor,
marked as reconciled (``source="reconcile"``)::

    async with AsyncRunflowClient() as client, open_store("sqlite:///./callbacks.db") as store:
        processor = CallbackProcessor(store, handle_callback)   # the handler serve runs
        report = await reconcile(client, processor, batch_ids=["0190f2a4-..."])
        print(report.recovered, "recovered")

The bytes come from the authenticated API, not from an anonymous POST, so they are not
verified against a callback secret again. When a batch or run has several deliveries (a
redelivery, or a run whose payload was rebuilt), the newest delivery's bytes are used; every
delivery of one batch or run shares one idempotency key, so the handler runs at most once.

Without a processor (``processor=None``) the payloads are only recorded in ``store``, where an
inbox worker (``runflow-callbacks serve --inbox``) picks them up. The handler receives the same
:class:`~runflow_callbacks.context.CallbackContext` as for a delivery, with
``source="reconcile"`` and ``signed`` False (the bytes were not verified again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from runflow_callbacks._log import printable
from runflow_callbacks.context import CallbackContext
from runflow_callbacks.errors import ConfigurationError, InvalidPayloadError, RunflowAPIError
from runflow_callbacks.models import CallbackDelivery, parse_callback
from runflow_callbacks.options import ReceiverOptions
from runflow_callbacks.processing import CallbackProcessor

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from datetime import datetime

    from runflow_callbacks.client import AsyncRunflowClient
    from runflow_callbacks.keys import KeyFunction
    from runflow_callbacks.stores import CallbackStore

__all__ = ["ReconcileItem", "ReconcileReport", "reconcile"]

logger = logging.getLogger("runflow_callbacks.reconcile")

ItemStatus = Literal[
    "recovered",
    "already_processed",
    "recorded",
    "unhandled",
    "in_progress",
    "failed",
    "dead",
    "invalid",
    "no_payload",
    "api_error",
]


@dataclass(frozen=True, slots=True)
class ReconcileItem:
    """What reconciliation did for one batch or run.

    ``status``: ``recovered`` (the handler ran now), ``already_processed``, ``recorded`` (no
    processor: stored for the inbox worker), ``unhandled`` (no handler takes its event: kept
    for when one does), ``in_progress`` (another replica holds it),
    ``failed``/``dead`` (the handler raised; the error is in the store), ``invalid`` (the
    stored bytes are not a callback payload), ``no_payload`` (no delivery with bytes yet) or
    ``api_error`` (the history could not be read; ``detail`` says why).
    """

    kind: Literal["batch", "run"]
    subject_id: str
    status: ItemStatus
    key: str | None = None
    detail: str | None = None


@dataclass(slots=True)
class ReconcileReport:
    """The items of one reconciliation run, with counts by status."""

    items: list[ReconcileItem] = field(default_factory=list)

    def count(self, status: ItemStatus) -> int:
        """How many items ended with ``status``."""
        return sum(1 for item in self.items if item.status == status)

    @property
    def recovered(self) -> int:
        """Callbacks whose handler ran because of this reconciliation."""
        return self.count("recovered")

    @property
    def ok(self) -> bool:
        """True when nothing failed, was invalid, or could not be read."""
        return not any(
            item.status in {"failed", "dead", "invalid", "api_error"} for item in self.items
        )

    def to_json(self) -> dict[str, object]:
        """Counts by status plus one object per item (what ``reconcile --json`` prints)."""
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.status] = counts.get(item.status, 0) + 1
        return {
            "counts": counts,
            "items": [
                {
                    "kind": item.kind,
                    "subject_id": item.subject_id,
                    "status": item.status,
                    "key": item.key,
                    "detail": item.detail,
                }
                for item in self.items
            ],
        }


_OUTCOME_STATUS: dict[str, ItemStatus] = {
    "processed": "recovered",
    "duplicate": "already_processed",
    "recorded": "recorded",
    "unhandled": "unhandled",
    "in_progress": "in_progress",
    "failed": "failed",
    "dead": "dead",
}


async def reconcile(
    client: AsyncRunflowClient,
    processor: CallbackProcessor | None,
    *,
    store: CallbackStore | None = None,
    batch_ids: Iterable[str] = (),
    run_ids: Iterable[str] = (),
    clock: Callable[[], datetime] | None = None,
    key: KeyFunction | None = None,
) -> ReconcileReport:
    """Process every delivered payload of the named batches and runs not yet processed.

    Pass a ``processor`` to run its handler now (in either of its modes; its key function and
    clock apply), or ``processor=None`` and a ``store`` to only record the payloads (``key``
    and ``clock`` then default to the receiver's defaults). Raises
    :class:`~runflow_callbacks.errors.ConfigurationError` for an impossible call.
    """
    if processor is None:
        if store is None:
            raise ConfigurationError("reconcile() needs a processor, or a store to record into")
        changes: dict[str, object] = {"mode": "inbox"}
        if key is not None:
            changes["key"] = key
        if clock is not None:
            changes["clock"] = clock
        recorder = CallbackProcessor(store, options=ReceiverOptions().replace(**changes))
    elif key is not None or clock is not None:
        raise ConfigurationError(
            "reconcile() uses the processor's key function and clock: give them to the processor"
        )
    else:
        recorder = processor
    report = ReconcileReport()
    subjects: list[tuple[Literal["batch", "run"], str]] = [
        *(("batch", str(subject)) for subject in batch_ids),
        *(("run", str(subject)) for subject in run_ids),
    ]
    for kind, subject_id in subjects:
        item = await _reconcile_one(client, recorder, kind, subject_id, run=processor is not None)
        logger.info(
            "reconcile %s %s: %s%s",
            kind,
            subject_id,
            item.status,
            f" ({printable(item.detail)})" if item.detail else "",
        )
        report.items.append(item)
    return report


async def _history(
    client: AsyncRunflowClient, kind: Literal["batch", "run"], subject_id: str
) -> list[CallbackDelivery]:
    if kind == "batch":
        return list(await client.batch_deliveries(subject_id))
    return list(await client.run_deliveries(subject_id))


def _newest_with_bytes(deliveries: list[CallbackDelivery]) -> CallbackDelivery | None:
    candidates = [delivery for delivery in deliveries if delivery.payload_bytes is not None]
    if not candidates:
        return None
    # The API lists deliveries oldest first; order by creation time when it is known.
    return max(
        enumerate(candidates),
        key=lambda pair: (pair[1].created_at is not None, pair[1].created_at, pair[0]),
    )[1]


async def _reconcile_one(
    client: AsyncRunflowClient,
    processor: CallbackProcessor,
    kind: Literal["batch", "run"],
    subject_id: str,
    *,
    run: bool,
) -> ReconcileItem:
    try:
        deliveries = await _history(client, kind, subject_id)
    except (RunflowAPIError, InvalidPayloadError, ConfigurationError) as error:
        # An unreadable answer, or an id the API cannot take, spoils this item only: the
        # report of the others (whose handlers may have run already) is not lost.
        return ReconcileItem(kind, subject_id, "api_error", detail=str(error))
    delivery = _newest_with_bytes(deliveries)
    body = None if delivery is None else delivery.body
    if delivery is None or body is None:
        return ReconcileItem(kind, subject_id, "no_payload")
    try:
        payload = parse_callback(body)
    except InvalidPayloadError as error:
        return ReconcileItem(kind, subject_id, "invalid", detail=str(error))
    context = CallbackContext(
        payload=payload,
        body=body,
        secret_id=None if delivery.signing_secret_id is None else str(delivery.signing_secret_id),
        secret_label=None,
        request_id=None,
        headers={"Runflow-Delivery-Id": str(delivery.id)} if delivery.id else {},
        received_at=processor.clock(),
        signed=False,
        source="reconcile",
    )
    if run:
        outcome = await processor.process_reconciled(context)
    else:
        outcome = await processor.record(context)
    detail = None if outcome.error is None else type(outcome.error).__name__
    return ReconcileItem(
        kind, subject_id, _OUTCOME_STATUS[outcome.status], key=outcome.key, detail=detail
    )
