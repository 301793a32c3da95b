"""The fake Runflow's org-level webhook API (``/v1/webhooks``, spec section 9).

Endpoints (auth and errors as for the rest of the fake's API):

- ``GET /v1/webhooks`` (a page) and ``POST /v1/webhooks`` ``{"url", "secret"?,
  "event_subscriptions"?}`` (201; the answer is the only one carrying ``secret``). Runflow's
  create fields are undocumented: these are ours. Without ``secret`` the fake makes one
  (``whsec_`` and base64); without ``event_subscriptions`` the webhook takes every event
  type. Subscriptions are event type codes, or objects with ``event_type_code``.
- ``GET``/``PATCH``/``DELETE /v1/webhooks/{id}``; PATCH takes ``url``, ``secret``,
  ``event_subscriptions`` and ``disabled`` (a bool: a disabled webhook gets no events).
  Deleting a webhook keeps its deliveries in ``/v1/webhooks/any/deliveries``.
- ``GET /v1/webhooks/event-types`` (a page) and ``/v1/webhooks/event-types/{code}``.
- ``GET /v1/webhooks/{webhook_id}/deliveries`` (``any``: every webhook's, oldest first),
  ``.../deliveries/{id}``, ``.../deliveries/{delivery_id}/attempts`` and ``.../attempts/{id}``.

``?embed=`` takes ``event_subscriptions`` and ``deliveries`` on webhooks, ``webhook`` on
deliveries and ``delivery`` on attempts; an object not embedded is null. Lists take
``limit`` (1 to 500) and answer ``{items, first, next, previous}`` with absolute URLs
(``?page=``), or with ``paging="pq"`` the cursor variant ``{items, next_pq, prev_pq}``
(sent back as ``?pq=``).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import TYPE_CHECKING, Any, Final, Literal

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.testing.fake._http import (
    AnswerError,
    error,
    json_object,
    optional_str,
    validation,
)
from runflow_callbacks.testing.fake.engine import webhook_signing_key_bytes
from runflow_callbacks.testing.fake.state import (
    WEBHOOK_EVENT_TYPES,
    WebhookDeliveryRecord,
    WebhookRecord,
    new_webhook_secret,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import datetime

    from starlette.requests import Request

    from runflow_callbacks.testing.fake.engine import DeliveryEngine
    from runflow_callbacks.testing.fake.state import FakeState, Subject

    Endpoint = Callable[[Request], Awaitable[Response]]

__all__ = ["PAGING_STYLES", "Paging", "WebhookAPI"]

Paging = Literal["links", "pq"]
PAGING_STYLES: Final[tuple[Paging, ...]] = ("links", "pq")
_MAX_LIMIT: Final = 500
_ANY: Final = "any"


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
        raise AnswerError(
            validation("limit must be from 1 to 500", error_type="value", field="limit")
        )
    return int(raw)


def _embedded(request: Request) -> frozenset[str]:
    raw = request.query_params.get("embed", "")
    return frozenset(name.strip() for name in raw.split(",") if name.strip())


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode("ascii")


def _offset(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        text = ""
    head, _, number = text.partition(":")
    if head != "offset" or not number.isdigit():
        raise AnswerError(validation("pq is not a cursor of this list", error_type="value"))
    return int(number)


class WebhookAPI:
    """The webhook endpoints of one fake, over its state and delivery engine.

    ``paging`` chooses the page shape (``links`` or ``pq``) and ``page_size`` the page size
    when a request gives no ``limit``.
    """

    def __init__(
        self,
        state: FakeState,
        engine: DeliveryEngine,
        *,
        clock: Callable[[], datetime],
        paging: Paging = "links",
        page_size: int = 100,
    ) -> None:
        if paging not in PAGING_STYLES:
            raise ConfigurationError(f"paging must be 'links' or 'pq', not {paging!r}")
        if not 1 <= page_size <= _MAX_LIMIT:
            raise ConfigurationError("page_size must be from 1 to 500")
        self.state = state
        self.engine = engine
        self.clock = clock
        self.paging: Paging = paging
        self.page_size = page_size

    def routes(self, api: Callable[[Endpoint], Endpoint]) -> list[Route]:
        """The routes, each endpoint wrapped by ``api`` (auth, faults, errors)."""
        base = "/v1/webhooks"
        deliveries = base + "/{webhook_id}/deliveries"
        attempts = deliveries + "/{delivery_id}/attempts"
        return [
            Route(base, api(self._list_webhooks), methods=["GET"]),
            Route(base, api(self._create_webhook), methods=["POST"]),
            Route(base + "/event-types", api(self._event_types), methods=["GET"]),
            Route(base + "/event-types/{code}", api(self._event_type), methods=["GET"]),
            Route(
                base + "/{webhook_id}",
                api(self._webhook_endpoint),
                methods=["GET", "PATCH", "DELETE"],
            ),
            Route(deliveries, api(self._list_deliveries), methods=["GET"]),
            Route(deliveries + "/{delivery_id}", api(self._delivery), methods=["GET"]),
            Route(attempts, api(self._list_attempts), methods=["GET"]),
            Route(attempts + "/{attempt_id}", api(self._attempt), methods=["GET"]),
        ]

    def deliver(self, subject: Subject) -> list[WebhookDeliveryRecord]:
        """Start a delivery of ``subject``'s event to every webhook subscribed to it."""
        event = subject.payload.get("event")
        return [
            self.engine.start_webhook(webhook, subject)
            for webhook in self.state.subscribed_webhooks(event)
        ]

    # --- pages ---------------------------------------------------------------------------

    def _page(self, request: Request, records: list[dict[str, Any]]) -> JSONResponse:
        limit = _limit(request, self.page_size)
        if self.paging == "pq":
            token = request.query_params.get("pq")
            offset = 0 if token is None else _offset(token)
            more = offset + limit < len(records)
            return JSONResponse(
                {
                    "items": records[offset : offset + limit],
                    "next_pq": _cursor(offset + limit) if more else None,
                    "prev_pq": _cursor(max(offset - limit, 0)) if offset else None,
                }
            )
        raw = request.query_params.get("page", "1")
        if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
            raise AnswerError(validation("page must be 1 or more", error_type="value"))
        number = int(raw)
        offset = (number - 1) * limit

        def link(page: int) -> str:
            return str(request.url.include_query_params(page=page))

        return JSONResponse(
            {
                "items": records[offset : offset + limit],
                "first": link(1),
                "next": link(number + 1) if offset + limit < len(records) else None,
                "previous": link(number - 1) if number > 1 else None,
            }
        )

    # --- webhooks ------------------------------------------------------------------------

    def _webhook_or_404(self, request: Request) -> WebhookRecord:
        webhook = self.state.webhook(request.path_params["webhook_id"])
        if webhook is None:
            raise AnswerError(error(404, "not_found", "webhook not found"))
        return webhook

    async def _list_webhooks(self, request: Request) -> Response:
        embed = _embedded(request)
        records = [webhook.to_json(embed=embed) for webhook in self.state.webhooks.values()]
        return self._page(request, records)

    def _event_types_of(self, data: dict[str, Any]) -> list[str]:
        given = data["event_subscriptions"]
        if not isinstance(given, list):
            raise AnswerError(
                validation(
                    "event_subscriptions must be a list",
                    error_type="type",
                    field="event_subscriptions",
                )
            )
        codes: list[str] = []
        for item in given:
            code = item.get("event_type_code") if isinstance(item, dict) else item
            if code not in WEBHOOK_EVENT_TYPES:
                raise AnswerError(
                    validation(
                        f"unknown event type {code!r}; known: {', '.join(WEBHOOK_EVENT_TYPES)}",
                        error_type="value",
                        field="event_subscriptions",
                    )
                )
            if code not in codes:
                codes.append(code)
        return codes

    def _url_of(self, data: dict[str, Any]) -> str:
        url = optional_str(data, "url")
        if url is None or not url.startswith(("http://", "https://")):
            raise AnswerError(
                validation("url must be an http(s) URL", error_type="value", field="url")
            )
        return url

    def _secret_of(self, data: dict[str, Any]) -> str | None:
        secret = optional_str(data, "secret")
        if secret is None:
            return None
        if not secret or secret.strip() != secret:
            raise AnswerError(
                validation(
                    "secret must be non-empty, without surrounding spaces",
                    error_type="value",
                    field="secret",
                )
            )
        try:
            webhook_signing_key_bytes(secret, self.engine.webhook_signing_key)
        except ConfigurationError as exc:
            raise AnswerError(validation(str(exc), error_type="value", field="secret")) from None
        return secret

    async def _create_webhook(self, request: Request) -> Response:
        data = await json_object(request)
        url = self._url_of(data)
        secret = self._secret_of(data) or new_webhook_secret()
        event_types = (
            list(WEBHOOK_EVENT_TYPES)
            if data.get("event_subscriptions") is None
            else self._event_types_of(data)
        )
        now = self.clock()
        webhook = WebhookRecord(
            id=uuid.uuid4(),
            org_id=self.state.org_id,
            url=url,
            secret=secret,
            event_types=event_types,
            created_at=now,
            updated_at=now,
        )
        self.state.webhooks[webhook.id] = webhook
        embed = frozenset({"event_subscriptions"})
        return JSONResponse(webhook.to_json(embed=embed, reveal=True), 201)

    async def _webhook_endpoint(self, request: Request) -> Response:
        webhook = self._webhook_or_404(request)
        if request.method == "DELETE":
            del self.state.webhooks[webhook.id]
            return Response(status_code=204)
        if request.method == "GET":
            return JSONResponse(webhook.to_json(embed=_embedded(request)))
        data = await json_object(request)
        changes: dict[str, Any] = {}
        if "url" in data:
            changes["url"] = self._url_of(data)
        if "secret" in data:
            secret = self._secret_of(data)
            if secret is None:
                raise AnswerError(
                    validation("secret must be a string", error_type="type", field="secret")
                )
            changes["secret"] = secret
        if "event_subscriptions" in data:
            changes["event_types"] = self._event_types_of(data)
        if "disabled" in data:
            if not isinstance(data["disabled"], bool):
                raise AnswerError(
                    validation("disabled must be a boolean", error_type="type", field="disabled")
                )
            now = self.clock()
            changes["disabled_at"] = (webhook.disabled_at or now) if data["disabled"] else None
        for name, value in changes.items():
            setattr(webhook, name, value)
        webhook.updated_at = self.clock()
        return JSONResponse(webhook.to_json(embed=_embedded(request) | {"event_subscriptions"}))

    async def _event_types(self, request: Request) -> Response:
        records = [
            {"code": code, "description": text} for code, text in WEBHOOK_EVENT_TYPES.items()
        ]
        return self._page(request, records)

    async def _event_type(self, request: Request) -> Response:
        code = request.path_params["code"]
        if code not in WEBHOOK_EVENT_TYPES:
            return error(404, "not_found", "event type not found")
        return JSONResponse({"code": code, "description": WEBHOOK_EVENT_TYPES[code]})

    # --- deliveries and attempts ------------------------------------------------------------

    def _deliveries(self, request: Request) -> list[WebhookDeliveryRecord]:
        if request.path_params["webhook_id"] == _ANY:
            return self.state.webhook_deliveries
        return self._webhook_or_404(request).deliveries

    def _delivery_or_404(self, request: Request) -> WebhookDeliveryRecord:
        wanted = request.path_params["delivery_id"]
        for delivery in self._deliveries(request):
            if str(delivery.id) == wanted:
                return delivery
        raise AnswerError(error(404, "not_found", "webhook delivery not found"))

    async def _list_deliveries(self, request: Request) -> Response:
        embed = _embedded(request)
        records = [delivery.to_json(embed=embed) for delivery in self._deliveries(request)]
        return self._page(request, records)

    async def _delivery(self, request: Request) -> Response:
        return JSONResponse(self._delivery_or_404(request).to_json(embed=_embedded(request)))

    def _attempt_json(self, delivery: WebhookDeliveryRecord, index: int, request: Request) -> Any:
        record = delivery.attempts[index].to_json()
        if "delivery" in _embedded(request):
            record["delivery"] = delivery.to_json()
        return record

    async def _list_attempts(self, request: Request) -> Response:
        delivery = self._delivery_or_404(request)
        records = [
            self._attempt_json(delivery, index, request) for index in range(len(delivery.attempts))
        ]
        return self._page(request, records)

    async def _attempt(self, request: Request) -> Response:
        delivery = self._delivery_or_404(request)
        wanted = request.path_params["attempt_id"]
        for index, attempt in enumerate(delivery.attempts):
            if str(attempt.id) == wanted:
                return JSONResponse(self._attempt_json(delivery, index, request))
        return error(404, "not_found", "webhook attempt not found")
