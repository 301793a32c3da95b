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

:func:`reconcile_webhooks` does the same from the deliveries of Runflow's org-level webhooks
(spec section 9) created since a time. Those keep the payload as a parsed object, not the bytes
that were sent, so the body is *rebuilt*: written again the way Runflow writes payloads
(:func:`~runflow_callbacks.wire.dumps_payload`). It says so everywhere it goes: the report's
items carry ``rebuilt=True``, the log line says "body rebuilt", and the recorded headers carry
``Runflow-Callbacks-Body: rebuilt`` next to ``Runflow-Webhook-Id`` and
``Runflow-Webhook-Delivery-Id``. Deliveries of one callback (several webhooks, or a
redelivery) share one idempotency key: the newest one's payload is used, once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

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
    from runflow_callbacks.webhooks import WebhookDelivery

__all__ = [
    "REBUILT_BODY_HEADER",
    "ItemKind",
    "ReconcileItem",
    "ReconcileReport",
    "reconcile",
    "reconcile_webhooks",
]

#: The header recorded with a callback whose body reconciliation rebuilt from a parsed payload
#: (value ``rebuilt``): those bytes are not the ones Runflow sent.
REBUILT_BODY_HEADER: Final = "Runflow-Callbacks-Body"

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


ItemKind = Literal["batch", "run", "webhook", "webhook_delivery"]
"""What a :class:`ReconcileItem` is about: a batch or run (``subject_id`` is its id), a
webhook whose deliveries could not be read (``subject_id``: the webhook id or ``any``), or a
webhook delivery whose payload is no batch or run callback (``subject_id``: the delivery id)."""


@dataclass(frozen=True, slots=True)
class ReconcileItem:
    """What reconciliation did for one batch or run.

    ``status``: ``recovered`` (the handler ran now), ``already_processed``, ``recorded`` (no
    processor: stored for the inbox worker), ``unhandled`` (no handler takes its event: kept
    for when one does), ``in_progress`` (another replica holds it),
    ``failed``/``dead`` (the handler raised; the error is in the store), ``invalid`` (the
    stored bytes are not a callback payload), ``no_payload`` (no delivery with bytes yet) or
    ``api_error`` (the history could not be read; ``detail`` says why).

    An item from :func:`reconcile_webhooks` names the ``webhook_id`` and ``delivery_id`` it
    came from, and ``rebuilt`` is True when its body was rebuilt from the parsed payload.
    """

    kind: ItemKind
    subject_id: str
    status: ItemStatus
    key: str | None = None
    detail: str | None = None
    webhook_id: str | None = None
    delivery_id: str | None = None
    rebuilt: bool = False


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
        return {"counts": counts, "items": [_item_json(item) for item in self.items]}


def _item_json(item: ReconcileItem) -> dict[str, object]:
    data: dict[str, object] = {
        "kind": item.kind,
        "subject_id": item.subject_id,
        "status": item.status,
        "key": item.key,
        "detail": item.detail,
    }
    if item.kind in {"webhook", "webhook_delivery"} or item.delivery_id is not None:
        data.update(webhook_id=item.webhook_id, delivery_id=item.delivery_id, rebuilt=item.rebuilt)
    return data


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
    recorder = _recorder(processor, store, key, clock, who="reconcile()")
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


def _recorder(
    processor: CallbackProcessor | None,
    store: CallbackStore | None,
    key: KeyFunction | None,
    clock: Callable[[], datetime] | None,
    *,
    who: str,
) -> CallbackProcessor:
    """The processor that records (and, given one, runs) what reconciliation finds."""
    if processor is None:
        if store is None:
            raise ConfigurationError(f"{who} needs a processor, or a store to record into")
        changes: dict[str, object] = {"mode": "inbox"}
        if key is not None:
            changes["key"] = key
        if clock is not None:
            changes["clock"] = clock
        return CallbackProcessor(store, options=ReceiverOptions().replace(**changes))
    if key is not None or clock is not None:
        raise ConfigurationError(
            f"{who} uses the processor's key function and clock: give them to the processor"
        )
    return processor


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


# --- org-level webhooks ------------------------------------------------------------------


async def reconcile_webhooks(
    client: AsyncRunflowClient,
    processor: CallbackProcessor | None,
    *,
    since: datetime,
    webhook_ids: Iterable[str] = ("any",),
    store: CallbackStore | None = None,
    clock: Callable[[], datetime] | None = None,
    key: KeyFunction | None = None,
) -> ReconcileReport:
    """Process every payload delivered to webhooks since ``since`` not yet processed.

    Reads the deliveries of each of ``webhook_ids`` (``"any"``, the default, spans all the
    organization's webhooks) created at or after ``since`` (timezone-aware) and handles them
    like :func:`reconcile` (the same ``processor``/``store``/``key``/``clock`` rules), except
    that each body is rebuilt from the delivery's parsed ``payload`` (see the module
    docstring). One item per callback (per idempotency key: the newest delivery counts), one
    ``no_payload`` or ``invalid`` item per delivery that cannot be used, and one
    ``api_error`` item per webhook id whose deliveries could not be read.

    A key function that reads the body (rather than the payload) sees the rebuilt bytes,
    which may differ from the bytes the receiver got: with such a function (or the default
    one, for a payload without an id or an event, which it keys by the body's SHA-256), a
    callback the receiver did get could be run again.
    """
    recorder = _recorder(processor, store, key, clock, who="reconcile_webhooks()")
    if since.utcoffset() is None:
        raise ConfigurationError("since= must be a timezone-aware datetime")
    report = ReconcileReport()
    for webhook_id in webhook_ids:
        for item in await _reconcile_webhook(
            client, recorder, str(webhook_id), since, run=processor is not None
        ):
            _log_webhook_item(item)
            report.items.append(item)
    return report


def _log_webhook_item(item: ReconcileItem) -> None:
    rebuilt = " (body rebuilt from the parsed payload, not the bytes received)"
    logger.info(
        "reconcile %s %s from webhook %s delivery %s: %s%s%s",
        item.kind,
        printable(item.subject_id),
        printable(item.webhook_id or "-"),
        printable(item.delivery_id or "-"),
        item.status,
        f" ({printable(item.detail)})" if item.detail else "",
        rebuilt if item.rebuilt else "",
    )


async def _reconcile_webhook(
    client: AsyncRunflowClient,
    processor: CallbackProcessor,
    webhook_id: str,
    since: datetime,
    *,
    run: bool,
) -> list[ReconcileItem]:
    try:
        deliveries = await client.list_webhook_deliveries(webhook_id, since=since)
    except (RunflowAPIError, InvalidPayloadError, ConfigurationError) as error:
        return [ReconcileItem("webhook", webhook_id, "api_error", detail=str(error))]
    items: list[ReconcileItem] = []
    # key -> (context, delivery, how many deliveries share the key), in first-seen order.
    newest: dict[str, tuple[CallbackContext, WebhookDelivery, int]] = {}
    # Oldest first (by creation time when known, then as listed), so the newest one wins.
    ordered = sorted(
        enumerate(deliveries),
        key=lambda pair: (pair[1].created_at is not None, pair[1].created_at, pair[0]),
    )
    for _, delivery in ordered:
        context_or_item = _webhook_context(processor, delivery, webhook_id)
        if isinstance(context_or_item, ReconcileItem):
            items.append(context_or_item)
            continue
        callback_key = processor.key_of(context_or_item)
        seen = newest.get(callback_key)
        newest[callback_key] = (context_or_item, delivery, 1 if seen is None else seen[2] + 1)
    for context, delivery, count in newest.values():
        if run:
            outcome = await processor.process_reconciled(context)
        else:
            outcome = await processor.record(context)
        detail = None if outcome.error is None else type(outcome.error).__name__
        if count > 1:
            shared = f"newest of {count} deliveries of this callback"
            detail = shared if detail is None else f"{detail}; {shared}"
        kind, subject = _webhook_subject(context, delivery)
        items.append(
            ReconcileItem(
                kind,
                subject,
                _OUTCOME_STATUS[outcome.status],
                key=outcome.key,
                detail=detail,
                webhook_id=_text(delivery.webhook_id) or webhook_id,
                delivery_id=_text(delivery.id),
                rebuilt=True,
            )
        )
    return items


def _webhook_subject(context: CallbackContext, delivery: WebhookDelivery) -> tuple[ItemKind, str]:
    """A batch or run item names its subject; any other payload, the delivery."""
    payload = context.payload
    if payload.kind == "batch":
        return "batch", str(payload.subject_id)
    if payload.kind == "run":
        return "run", str(payload.subject_id)
    return "webhook_delivery", _text(delivery.id) or ""


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _webhook_context(
    processor: CallbackProcessor, delivery: WebhookDelivery, webhook_id: str
) -> CallbackContext | ReconcileItem:
    """The context of a webhook delivery's rebuilt body, or the item saying why there is none."""
    delivery_id = _text(delivery.id)
    source = _text(delivery.webhook_id) or webhook_id

    def unusable(status: ItemStatus, detail: str | None) -> ReconcileItem:
        return ReconcileItem(
            "webhook_delivery",
            delivery_id or "",
            status,
            detail=detail,
            webhook_id=source,
            delivery_id=delivery_id,
        )

    body = delivery.rebuilt_body()
    if body is None:
        return unusable("no_payload", None)
    try:
        payload = parse_callback(body)
    except InvalidPayloadError as error:
        return unusable("invalid", str(error))
    headers = {REBUILT_BODY_HEADER: "rebuilt", "Runflow-Webhook-Id": source}
    if delivery_id is not None:
        headers["Runflow-Webhook-Delivery-Id"] = delivery_id
    return CallbackContext(
        payload=payload,
        body=body,
        secret_id=None,
        secret_label=None,
        request_id=None,
        headers=headers,
        received_at=processor.clock(),
        signed=False,
        source="reconcile",
    )
