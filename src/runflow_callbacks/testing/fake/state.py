"""The fake Runflow's records: batches, runs, callback secrets, deliveries and their attempts,
webhooks with their deliveries and attempts.

Records serialize to exactly the JSON Runflow's API answers (spec sections 3, 6 and 9). All of
them live in one :class:`FakeState` owned by the event loop that serves the fake; nothing here
does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from runflow_callbacks.wire import payload_to_dict

if TYPE_CHECKING:
    from datetime import datetime

__all__ = [
    "DELIVERY_STATES",
    "FAILURE_REASONS",
    "IN_FLIGHT_STATES",
    "WEBHOOK_EVENT_TYPES",
    "Attempt",
    "CallbackSecretRecord",
    "Delivery",
    "FakeState",
    "Subject",
    "WebhookAttemptRecord",
    "WebhookDeliveryRecord",
    "WebhookRecord",
]

Kind = Literal["batch", "run"]

#: Delivery ``status_code`` values (Runflow leaves them undocumented; these are ours):
#: ``pending`` waits for its next attempt (``next_attempt_at``), ``delivering`` has an attempt
#: in progress, ``succeeded`` got a 2xx, ``failed`` gave up after ``max_attempts``.
DELIVERY_STATES: Final = ("pending", "delivering", "succeeded", "failed")
IN_FLIGHT_STATES: Final = frozenset({"pending", "delivering"})
#: ``failure_reason_code`` values of the last failed attempt.
FAILURE_REASONS: Final = ("http_error", "timeout", "connection_error")
#: The event types webhooks subscribe to (spec section 9 lists these three), with the
#: description ``GET /v1/webhooks/event-types`` shows (ours: Runflow's are undocumented).
WEBHOOK_EVENT_TYPES: Final = {
    "run.completed": "A run finished successfully.",
    "run.failed": "A run failed.",
    "run.cancelled": "A run was cancelled.",
}


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass
class Subject:
    """A finished batch or run, with the payload fields its callback is built from."""

    kind: Kind
    id: uuid.UUID
    callback_url: str | None
    payload: dict[str, Any]
    deliveries: list[Delivery] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The record answered by ``POST /_fake/batches`` and ``POST /_fake/runs``."""
        payload = payload_to_dict(self.payload)
        return {
            "id": str(self.id),
            "callback_url": self.callback_url,
            **{
                key: _iso(value) if hasattr(value, "isoformat") else value
                for key, value in payload.items()
                if key not in {"run_id", "batch_id"}
            },
        }

    def in_flight(self) -> Delivery | None:
        """The delivery still pending or delivering, if any."""
        for delivery in self.deliveries:
            if delivery.status_code in IN_FLIGHT_STATES:
                return delivery
        return None


@dataclass
class Attempt:
    """One HTTP attempt of a delivery."""

    id: uuid.UUID
    delivery_id: uuid.UUID
    attempt_number: int
    created_at: datetime
    status_code: int | None = None
    response_body: str | None = None
    response_time_ms: int | None = None
    error_message: str | None = None
    #: When the next attempt is due after this one failed (None: none follows, or not yet).
    next_retry_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The attempt record of spec section 3, exactly."""
        return {
            "id": str(self.id),
            "delivery_id": str(self.delivery_id),
            "attempt_number": self.attempt_number,
            "status_code": self.status_code,
            "response_body": self.response_body,
            "response_time_ms": self.response_time_ms,
            "error_message": self.error_message,
            "created_at": _iso(self.created_at),
        }


@dataclass
class Delivery:
    """One delivery of a callback (automatic, or a manual redelivery) and its attempts."""

    id: uuid.UUID
    subject: Subject
    callback_url: str
    payload_bytes: bytes
    signing_secret_id: uuid.UUID | None
    is_automatic: bool
    max_attempts: int
    created_at: datetime
    updated_at: datetime
    status_code: str = "pending"
    failure_reason_code: str | None = None
    failure_detail: str | None = None
    next_attempt_at: datetime | None = None
    completed_at: datetime | None = None
    attempts: list[Attempt] = field(default_factory=list)
    #: The record type of this delivery's attempts.
    attempt_type: ClassVar[type[Attempt]] = Attempt

    @property
    def attempt_count(self) -> int:
        """How many attempts were made so far."""
        return len(self.attempts)

    @property
    def in_flight(self) -> bool:
        """Whether more attempts may still come."""
        return self.status_code in IN_FLIGHT_STATES

    def to_json(self) -> dict[str, Any]:
        """The delivery record of spec section 3, exactly (attempts included)."""
        return {
            "id": str(self.id),
            f"{self.subject.kind}_id": str(self.subject.id),
            "callback_url": self.callback_url,
            "payload_bytes": self.payload_bytes.decode("utf-8"),
            "payload": json.loads(self.payload_bytes),
            "signing_secret_id": None
            if self.signing_secret_id is None
            else str(self.signing_secret_id),
            "is_automatic": self.is_automatic,
            "status_code": self.status_code,
            "failure_reason_code": self.failure_reason_code,
            "failure_detail": self.failure_detail,
            "attempt_count": self.attempt_count,
            "max_attempts": self.max_attempts,
            "next_attempt_at": _iso(self.next_attempt_at),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "completed_at": _iso(self.completed_at),
            "attempts": [attempt.to_json() for attempt in self.attempts],
        }


@dataclass
class CallbackSecretRecord:
    """A callback secret of the organization. ``plain_secret`` leaves only in the create answer."""

    id: uuid.UUID
    org_id: uuid.UUID
    plain_secret: str = field(repr=False)
    label: str | None
    is_current: bool
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None = None
    last_used_at: datetime | None = None

    @property
    def key_prefix(self) -> str:
        """The first characters of the secret, as Runflow shows them to tell secrets apart."""
        return self.plain_secret[:12]

    def to_json(self, *, reveal: bool = False) -> dict[str, Any]:
        """The record of spec section 6; ``plain_secret`` only when ``reveal`` (on creation)."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "org_id": str(self.org_id),
            "key_prefix": self.key_prefix,
            "is_current": self.is_current,
            "label": self.label,
            "disabled_at": _iso(self.disabled_at),
            "last_used_at": _iso(self.last_used_at),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }
        if reveal:
            data["plain_secret"] = self.plain_secret
        return data


@dataclass
class WebhookAttemptRecord(Attempt):
    """One HTTP attempt of a webhook delivery."""

    def to_json(self) -> dict[str, Any]:
        """The webhook attempt record of spec section 9 (``delivery`` only when embedded).

        ``succeeded`` is null while the attempt waits for its answer.
        """
        succeeded = None
        if self.response_time_ms is not None:  # the attempt ended
            succeeded = self.status_code is not None and 200 <= self.status_code < 300
        return {
            "id": str(self.id),
            "delivery_id": str(self.delivery_id),
            "attempt_number": self.attempt_number,
            "status_code": self.status_code,
            "response_body": self.response_body,
            "response_time_ms": self.response_time_ms,
            "succeeded": succeeded,
            "next_retry_at": _iso(self.next_retry_at),
            "created_at": _iso(self.created_at),
            "delivery": None,
        }


@dataclass
class WebhookRecord:
    """A webhook of the organization: where its events go, signed with its own secret."""

    id: uuid.UUID
    org_id: uuid.UUID
    url: str
    secret: str = field(repr=False)
    event_types: list[str]
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None = None
    last_triggered_at: datetime | None = None
    deliveries: list[WebhookDeliveryRecord] = field(default_factory=list)

    @property
    def secret_fingerprint(self) -> str:
        """Tells secrets apart without showing them: the first 16 hex digits of their SHA-256."""
        return hashlib.sha256(self.secret.encode("utf-8")).hexdigest()[:16]

    def subscribes_to(self, event: object) -> bool:
        """Whether an event of that name goes to this webhook now."""
        return self.disabled_at is None and event in self.event_types

    def to_json(
        self, *, embed: frozenset[str] = frozenset(), reveal: bool = False
    ) -> dict[str, Any]:
        """The webhook record of spec section 9; ``event_subscriptions`` and ``deliveries``
        only when embedded, ``secret`` only when ``reveal`` (the create answer)."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "org_id": str(self.org_id),
            "url": self.url,
            "secret_fingerprint": self.secret_fingerprint,
            "disabled_at": _iso(self.disabled_at),
            "last_triggered_at": _iso(self.last_triggered_at),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "event_subscriptions": [
                {"webhook_id": str(self.id), "event_type_code": code} for code in self.event_types
            ]
            if "event_subscriptions" in embed
            else None,
            "deliveries": [delivery.to_json() for delivery in self.deliveries]
            if "deliveries" in embed
            else None,
        }
        if reveal:
            data["secret"] = self.secret
        return data


@dataclass(kw_only=True)
class WebhookDeliveryRecord(Delivery):
    """One delivery of an event to a webhook. The engine drives it like a callback delivery
    (same states, retries and attempts); its JSON is the webhook delivery of spec section 9,
    which has no ``payload_bytes``, state or ``max_attempts``."""

    webhook: WebhookRecord
    event_type_code: str
    attempt_type: ClassVar[type[Attempt]] = WebhookAttemptRecord

    def to_json(self, *, embed: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The webhook delivery record (``webhook`` only when embedded)."""
        return {
            "id": str(self.id),
            "webhook_id": str(self.webhook.id),
            "event_type_code": self.event_type_code,
            "payload": json.loads(self.payload_bytes),
            "created_at": _iso(self.created_at),
            "attempts": [attempt.to_json() for attempt in self.attempts],
            "webhook": self.webhook.to_json() if "webhook" in embed else None,
        }


def new_webhook_secret() -> str:
    """A webhook secret as the fake makes them: ``whsec_`` and standard base64 of 24 random
    bytes, so that every signing key mode (raw, without prefix, base64-decoded) can use it."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


@dataclass
class FakeState:
    """Everything the fake Runflow knows about one organization."""

    org_id: uuid.UUID = field(default_factory=uuid.uuid4)
    subjects: dict[tuple[Kind, uuid.UUID], Subject] = field(default_factory=dict)
    secrets: dict[uuid.UUID, CallbackSecretRecord] = field(default_factory=dict)
    webhooks: dict[uuid.UUID, WebhookRecord] = field(default_factory=dict)
    #: Every webhook delivery in creation order, those of deleted webhooks included.
    webhook_deliveries: list[WebhookDeliveryRecord] = field(default_factory=list)

    def webhook(self, webhook_id: str) -> WebhookRecord | None:
        """The webhook with that id (None for an unknown or malformed id)."""
        try:
            return self.webhooks.get(uuid.UUID(webhook_id))
        except ValueError:
            return None

    def subscribed_webhooks(self, event: object) -> list[WebhookRecord]:
        """The webhooks an event of that name is delivered to now, oldest first."""
        return [webhook for webhook in self.webhooks.values() if webhook.subscribes_to(event)]

    def current_secret(self) -> CallbackSecretRecord | None:
        """The secret new deliveries are signed with (None: the org has none, send unsigned)."""
        for record in self.secrets.values():
            if record.is_current and record.disabled_at is None:
                return record
        return None

    def add_secret(
        self, *, now: datetime, label: str | None = None, plain_secret: str | None = None
    ) -> CallbackSecretRecord:
        """Create a secret; it becomes current when the organization has no current one yet."""
        record = CallbackSecretRecord(
            id=uuid.uuid4(),
            org_id=self.org_id,
            plain_secret=plain_secret or f"whsec_{secrets.token_urlsafe(32)}",
            label=label,
            is_current=self.current_secret() is None,
            created_at=now,
            updated_at=now,
        )
        self.secrets[record.id] = record
        return record

    def promote(self, record: CallbackSecretRecord, *, now: datetime) -> None:
        """Make ``record`` the current secret (the previous one stays valid, no longer current)."""
        for other in self.secrets.values():
            if other.is_current and other is not record:
                other.is_current = False
                other.updated_at = now
        record.is_current = True
        record.updated_at = now

    def subject(self, kind: Kind, subject_id: str) -> Subject | None:
        """The batch or run with that id (None for an unknown or malformed id)."""
        try:
            key = uuid.UUID(subject_id)
        except ValueError:
            return None
        return self.subjects.get((kind, key))
