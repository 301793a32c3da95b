"""Runflow's org-level webhooks (``/v1/webhooks``, spec section 9): models and secrets.

A webhook is an org-wide subscription to event types (``run.completed``, ``run.failed``,
``run.cancelled``) instead of a ``callback_url`` per run; Runflow delivers "the same payload
shape" as a callback. The API client (:class:`~runflow_callbacks.client.RunflowClient`:
``list_webhooks()``, ``list_webhook_deliveries(...)``...) reads them into the models here:
:class:`Webhook`, :class:`WebhookEventSubscription`, :class:`WebhookEventType`,
:class:`WebhookDelivery`, :class:`WebhookAttempt`, and :class:`Page` for one page of a list.

Every field of every model may be null or absent, and unknown fields are kept
(``model_extra``). Ids are kept as strings: their format is undocumented.

A webhook delivery keeps its ``payload`` as a parsed object, without the bytes that were sent
(there is no ``payload_bytes``). :meth:`WebhookDelivery.rebuilt_body` writes the bytes again the
way Runflow writes payloads (:func:`~runflow_callbacks.wire.dumps_payload`), and
:meth:`WebhookDelivery.parse_payload` parses those into the typed callback payload::

    >>> delivery = WebhookDelivery.model_validate({"id": "d1", "payload": {
    ...     "event": "run.completed", "run_id": "0190f2a4-0000-7000-8000-000000000001",
    ...     "status": "succeeded"}})
    >>> delivery.rebuilt_body()[:52]
    b'{"event": "run.completed", "run_id": "0190f2a4-0000-'
    >>> type(delivery.parse_payload()).__name__
    'RunCallbackPayload'

Rebuilt bytes are *not* what Runflow sent: they cannot be verified against a signature, and
equal the original only if Runflow wrote the payload as :mod:`runflow_callbacks.wire` does.

Signing is undocumented for webhooks (which header, which algorithm, which key). This library
assumes the callback scheme (``Runflow-Signature``, HMAC-SHA256 hex over the raw body) keyed by
the webhook's own secret; :func:`webhook_secret` builds that secret as a
:class:`~runflow_callbacks.verifier.Secret` for a :class:`~runflow_callbacks.verifier.Verifier`,
from the whole string (``key="raw"``, the callback way) or without its ``whsec_`` prefix
(``key="without_prefix"``)::

    >>> webhook_secret("whsec_abc123", key="without_prefix").reveal()
    'abc123'
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict

from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.models import AnyCallbackPayload, parse_callback
from runflow_callbacks.verifier import Secret
from runflow_callbacks.wire import dumps_payload

__all__ = [
    "WEBHOOK_EVENT_TYPES",
    "Page",
    "Webhook",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEventSubscription",
    "WebhookEventType",
    "WebhookKey",
    "webhook_secret",
]

#: The event types the documentation lists for webhooks (batch events and
#: ``run.partial_succeeded`` are not listed; whether Runflow sends them is unknown).
WEBHOOK_EVENT_TYPES: Final = ("run.completed", "run.failed", "run.cancelled")

WebhookKey: TypeAlias = Literal["raw", "without_prefix", "base64"]
"""How :func:`webhook_secret` turns the webhook's secret string into the HMAC key: ``raw``, the
whole string as UTF-8 (the callback scheme, the default); ``without_prefix``, the string
after ``whsec_``."""

_WHSEC: Final = "whsec_"
_T = TypeVar("_T")


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class WebhookEventSubscription(_Model):
    """One event type a webhook subscribes to (``event_subscriptions[]``)."""

    webhook_id: str | None = None
    event_type_code: str | None = None


class WebhookEventType(_Model):
    """An entry of ``GET /v1/webhooks/event-types`` (its fields are not documented)."""

    code: str | None = None
    description: str | None = None


class Webhook(_Model):
    """A webhook of ``GET /v1/webhooks`` or ``GET /v1/webhooks/{id}``.

    ``event_subscriptions`` and ``deliveries`` are present when asked for with ``embed=``.
    """

    id: str | None = None
    org_id: str | None = None
    url: str | None = None
    secret_fingerprint: str | None = None
    disabled_at: AwareDatetime | None = None
    last_triggered_at: AwareDatetime | None = None
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    event_subscriptions: list[WebhookEventSubscription] | None = None
    deliveries: list[WebhookDelivery] | None = None

    @property
    def event_types(self) -> list[str]:
        """The subscribed event type codes (empty when they were not embedded)."""
        return [
            item.event_type_code
            for item in self.event_subscriptions or []
            if item.event_type_code is not None
        ]


class WebhookAttempt(_Model):
    """One HTTP attempt of a webhook delivery. ``status_code`` is the receiver's HTTP answer."""

    id: str | None = None
    delivery_id: str | None = None
    attempt_number: int | None = None
    status_code: int | None = None
    response_body: str | None = None
    response_time_ms: int | None = None
    succeeded: bool | None = None
    next_retry_at: AwareDatetime | None = None
    created_at: AwareDatetime | None = None
    delivery: WebhookDelivery | None = None


class WebhookDelivery(_Model):
    """One delivery of an event to a webhook, attempts included when the API sends them.

    ``payload`` is the parsed envelope (spec section 2); the bytes that were sent are not kept.
    """

    id: str | None = None
    webhook_id: str | None = None
    event_type_code: str | None = None
    payload: dict[str, Any] | None = None
    created_at: AwareDatetime | None = None
    attempts: list[WebhookAttempt] | None = None
    webhook: Webhook | None = None

    def rebuilt_body(self) -> bytes | None:
        """``payload`` written again as Runflow writes payload bytes (None without a payload).

        Not the bytes that were sent: Runflow does not keep them for webhook deliveries.
        """
        return None if self.payload is None else dumps_payload(self.payload)

    def parse_payload(self) -> AnyCallbackPayload | None:
        """The typed callback payload, parsed from :meth:`rebuilt_body` (None without one).

        Raises :class:`~runflow_callbacks.errors.InvalidPayloadError` when the payload is not
        a callback envelope.
        """
        body = self.rebuilt_body()
        return None if body is None else parse_callback(body)


class Page(_Model, Generic[_T]):
    """One page of a list: ``{items, first, next, previous}`` or the ``pq`` cursor variant.

    The client follows ``next`` (a URL, absolute or relative to the page) or ``next_pq`` (sent
    back as ``?pq=``) until neither is set; see
    :meth:`~runflow_callbacks.client.RunflowClient.list_webhook_deliveries`.
    """

    items: list[_T] | None = None
    first: str | None = None
    next: str | None = None
    previous: str | None = None
    next_pq: str | int | None = None
    prev_pq: str | int | None = None


Webhook.model_rebuild()
WebhookAttempt.model_rebuild()
WebhookDelivery.model_rebuild()


def webhook_secret(
    value: str,
    *,
    key: WebhookKey = "raw",
    id: str | None = None,  # noqa: A002 - mirrors Secret's and Runflow's field name
    label: str | None = None,
) -> Secret:
    """The :class:`~runflow_callbacks.verifier.Secret` verifying a webhook's deliveries.

    Runflow does not document how webhook deliveries are signed; by default (``key="raw"``)
    the key is the whole secret string as UTF-8, exactly as for callbacks.
    ``key="without_prefix"`` uses the string after ``whsec_`` (a value without that prefix
    raises :class:`~runflow_callbacks.errors.ConfigurationError`), ``key="base64"`` the bytes
    that string decodes to as base64 (as Standard Webhooks signers do). Verify with
    ``Verifier([webhook_secret(...)])`` or pass it wherever a secret is taken.
    """
    whole = Secret(value, id=id, label=label)  # checks the type and the value
    if key == "raw":
        return whole
    if key == "without_prefix":
        if not value.startswith(_WHSEC):
            raise ConfigurationError(
                "key='without_prefix' needs a secret starting with 'whsec_' (use key='raw')"
            )
        return Secret(value[len(_WHSEC) :], id=id, label=label)
    if key == "base64":
        encoded = value.removeprefix(_WHSEC)
        try:
            decoded = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                "key='base64' needs a secret whose part after 'whsec_' is base64"
            ) from None
        if not decoded:
            raise ConfigurationError("key='base64' needs a secret that decodes to some bytes")
        return Secret(value, id=id, label=label, key=decoded)
    raise ConfigurationError(f"key must be 'raw', 'without_prefix' or 'base64', not {key!r}")
