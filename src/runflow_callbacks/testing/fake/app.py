"""The fake Runflow as an ASGI app: test-only endpoints plus the Runflow API subset.

Test-only (no auth):

- ``POST /_fake/batches`` / ``POST /_fake/runs`` with ``{"callback_url", "event", "status",
  "output"?, "metadata"?, "id"?}`` create a finished batch or run (missing fields get realistic
  defaults from :class:`~runflow_callbacks.testing.PayloadFactory`), answer 201 with the record
  and start its delivery when it has a ``callback_url``.
- ``POST /_fake/faults`` with ``{"count", "status"?}`` answers the next ``count`` API calls with
  ``status`` (default 503), to exercise a client's retries.

Runflow API (``Authorization: Bearer <api key>``; an ``X-Organization-Id`` header, when sent,
must be the fake's ``org_id`` or the answer is 403; errors as ``{code, message, errors}``):
``GET /v1/{batches|runs}/{id}/callback``,
``POST /v1/{batches|runs}/{id}/callback-redeliveries``, ``POST``/``GET`` ``/v1/callback-secrets``,
``GET``/``PATCH``/``DELETE`` ``/v1/callback-secrets/{id}``, and the org-level webhooks of
:mod:`runflow_callbacks.testing.fake.webhook_api` (``/v1/webhooks``...). A finished run or
batch created through ``/_fake`` is delivered to its ``callback_url`` and, as a webhook event,
to every webhook subscribed to its event.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.testing.factories import PayloadFactory
from runflow_callbacks.testing.fake._http import (
    AnswerError,
    error,
    json_object,
    optional_str,
    validation,
)
from runflow_callbacks.testing.fake.engine import (
    DEFAULT_ATTEMPT_TIMEOUT_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_DELAYS_S,
    DeliveryEngine,
    WebhookSigningKey,
    utc_now,
)
from runflow_callbacks.testing.fake.state import FakeState, Kind, Subject
from runflow_callbacks.testing.fake.webhook_api import Paging, WebhookAPI
from runflow_callbacks.verifier import SIGNATURE_HEADER

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
    from datetime import datetime

    import httpx
    from starlette.requests import Request
    from starlette.types import Receive, Scope, Send

__all__ = ["DEFAULT_API_KEY", "FakeRunflow"]

#: The API key a :class:`FakeRunflow` accepts unless told otherwise.
DEFAULT_API_KEY: Final = "rf_test_api_key"
_PLURAL: Final[dict[Kind, str]] = {"batch": "batches", "run": "runs"}


class FakeRunflow:
    """A fake Runflow that delivers callbacks like the real one and serves its API subset.

    It is an ASGI app: serve it with uvicorn (``runflow-callbacks fake-runflow``, the
    ``fake_runflow`` pytest fixture, or :func:`~runflow_callbacks.testing.serve_in_thread`).

    ``api_key`` is the Bearer key the API accepts; ``secret`` installs an initial current
    callback secret with exactly that value (without one, deliveries are unsigned until a
    secret is created through the API). ``retry_delays_s``, ``max_attempts`` and
    ``attempt_timeout_s`` shape the retries (see :class:`DeliveryEngine`); ``clock``,
    ``sleep``, ``seed`` and ``transport`` make time, randomness and HTTP injectable.

    Webhook deliveries are signed with each webhook's secret: ``webhook_signature_header``
    names the header and ``webhook_signing_key`` says how the secret keys the HMAC (``raw``,
    ``without_prefix``, ``base64``; see :mod:`~runflow_callbacks.testing.fake.engine`).
    ``webhook_paging`` (``links`` or ``pq``) and ``webhook_page_size`` shape the webhook API's
    lists (see :mod:`~runflow_callbacks.testing.fake.webhook_api`).
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        secret: str | None = None,
        retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        seed: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        webhook_signature_header: str = SIGNATURE_HEADER,
        webhook_signing_key: WebhookSigningKey = "raw",
        webhook_paging: Paging = "links",
        webhook_page_size: int = 100,
    ) -> None:
        if not api_key:
            raise ConfigurationError("the fake Runflow needs a non-empty api_key")
        self._api_key = api_key
        self.clock = clock
        self.state = FakeState()
        if secret is not None:
            if not secret or secret.strip() != secret:
                raise ConfigurationError("secret must be non-empty, without surrounding spaces")
            self.state.add_secret(now=clock(), label="initial", plain_secret=secret)
        self.engine = DeliveryEngine(
            self.state,
            retry_delays_s=retry_delays_s,
            max_attempts=max_attempts,
            attempt_timeout_s=attempt_timeout_s,
            clock=clock,
            sleep=sleep,
            transport=transport,
            webhook_signature_header=webhook_signature_header,
            webhook_signing_key=webhook_signing_key,
        )
        self.webhooks = WebhookAPI(
            self.state,
            self.engine,
            clock=clock,
            paging=webhook_paging,
            page_size=webhook_page_size,
        )
        self.payloads = PayloadFactory(clock=clock, seed=seed)
        self._faults_lock = threading.Lock()
        self._faults: deque[list[int]] = deque()  # [status, remaining] pairs, in order
        self.app = Starlette(
            routes=self._routes(),
            exception_handlers={HTTPException: self._http_error},
            lifespan=self._lifespan,
        )

    def __repr__(self) -> str:
        return f"FakeRunflow(org_id={str(self.state.org_id)!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @property
    def api_key(self) -> str:
        """The Bearer key the fake's API accepts (a test value, not a credential)."""
        return self._api_key

    @property
    def org_id(self) -> uuid.UUID:
        """The organization id the fake answers for (accepted in ``X-Organization-Id``)."""
        return self.state.org_id

    def fail_next_api_calls(self, count: int, *, status: int = 503) -> None:
        """Answer the next ``count`` API calls with ``status`` (thread-safe).

        Every ``/v1`` call counts, including the history polls of
        :meth:`RunningFakeRunflow.wait_for_delivery`.
        """
        if count < 0 or not 400 <= status <= 599:
            raise ConfigurationError("count must be >= 0 and status an HTTP error status")
        if count:
            with self._faults_lock:
                self._faults.append([status, count])

    def _next_fault(self) -> int | None:
        with self._faults_lock:
            if not self._faults:
                return None
            fault = self._faults[0]
            fault[1] -= 1
            if fault[1] == 0:
                self._faults.popleft()
            return fault[0]

    # --- plumbing ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        yield
        await self.engine.aclose()

    @staticmethod
    async def _http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return error(exc.status_code, code, str(exc.detail))

    def _api(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            fault = self._next_fault()
            if fault is not None:
                return error(fault, "service_unavailable", "injected fault")
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or key.strip() != self._api_key:
                return error(401, "unauthorized", "missing or invalid API key")
            org = request.headers.get("x-organization-id")
            if org is not None and org.strip() != str(self.state.org_id):
                return error(403, "forbidden", "the API key has no access to that organization")
            try:
                return await handler(request)
            except AnswerError as exc:
                return exc.response

        return endpoint

    @staticmethod
    def _fake(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except AnswerError as exc:
                return exc.response

        return endpoint

    def _routes(self) -> list[Route]:
        routes = [
            Route("/_fake/faults", self._fake(self._faults_endpoint), methods=["POST"]),
            Route("/v1/callback-secrets", self._api(self._create_secret), methods=["POST"]),
            Route("/v1/callback-secrets", self._api(self._list_secrets), methods=["GET"]),
            Route(
                "/v1/callback-secrets/{secret_id}",
                self._api(self._secret_endpoint),
                methods=["GET", "PATCH", "DELETE"],
            ),
        ]
        for kind, plural in _PLURAL.items():
            routes += [
                Route(f"/_fake/{plural}", self._fake(self._creator(kind)), methods=["POST"]),
                Route(
                    f"/v1/{plural}/{{subject_id}}/callback",
                    self._api(self._history(kind)),
                    methods=["GET"],
                ),
                Route(
                    f"/v1/{plural}/{{subject_id}}/callback-redeliveries",
                    self._api(self._redeliver(kind)),
                    methods=["POST"],
                ),
            ]
        return routes + self.webhooks.routes(self._api)

    # --- test-only endpoints ---------------------------------------------------------------

    async def _faults_endpoint(self, request: Request) -> Response:
        data = await json_object(request)
        count, status = data.get("count", 1), data.get("status", 503)
        if not isinstance(count, int) or not isinstance(status, int):
            return validation("count and status must be integers", error_type="type")
        try:
            self.fail_next_api_calls(count, status=status)
        except ConfigurationError as exc:
            return validation(str(exc), error_type="value")
        return JSONResponse({"count": count, "status": status}, 201)

    def _creator(self, kind: Kind) -> Callable[[Request], Awaitable[Response]]:
        async def create(request: Request) -> Response:
            data = await json_object(request)
            callback_url = optional_str(data, "callback_url")
            if callback_url is not None and not callback_url.startswith(("http://", "https://")):
                return validation(
                    "callback_url must be an http(s) URL", error_type="value", field="callback_url"
                )
            options: dict[str, Any] = {"metadata": data.get("metadata")}
            for name in ("event", "status"):
                options[name] = optional_str(data, name)
            subject_id = optional_str(data, "id")
            if subject_id is not None:
                try:
                    options[f"{kind}_id"] = uuid.UUID(subject_id)
                except ValueError:
                    return validation("id must be a UUID", error_type="value", field="id")
            if "output" in data:
                options["output"] = self._output(kind, data["output"])
            try:
                build = self.payloads.batch if kind == "batch" else self.payloads.run
                payload = build(**options).model_dump(mode="python", exclude_unset=True)
            except ConfigurationError as exc:
                return validation(str(exc), error_type="value")
            except ValidationError as exc:
                where = ".".join(str(part) for part in exc.errors()[0]["loc"])
                return validation(f"invalid {kind} field {where}", error_type="value")
            subject = Subject(
                kind=kind,
                id=uuid.UUID(str(payload[f"{kind}_id"])),
                callback_url=callback_url,
                payload=payload,
            )
            if (kind, subject.id) in self.state.subjects:
                return error(409, "conflict", f"a {kind} with id {subject.id} already exists")
            self.state.subjects[(kind, subject.id)] = subject
            if callback_url is not None:
                self.engine.start(subject, is_automatic=True)
            self.webhooks.deliver(subject)
            return JSONResponse(subject.to_json(), 201)

        return create

    def _output(self, kind: Kind, output: Any) -> Any:
        if (
            kind == "batch"
            and isinstance(output, dict)
            and isinstance(output.get("items"), list)
            and all(isinstance(item, dict) for item in output["items"])
        ):
            return {**self.payloads.batch_output(output["items"]), **output}
        return output

    # --- delivery history and redelivery ----------------------------------------------------

    def _subject_or_404(self, kind: Kind, request: Request) -> Subject:
        subject = self.state.subject(kind, request.path_params["subject_id"])
        if subject is None:
            raise AnswerError(error(404, "not_found", f"{kind} not found"))
        return subject

    def _history(self, kind: Kind) -> Callable[[Request], Awaitable[Response]]:
        async def history(request: Request) -> Response:
            subject = self._subject_or_404(kind, request)
            return JSONResponse([delivery.to_json() for delivery in subject.deliveries])

        return history

    def _redeliver(self, kind: Kind) -> Callable[[Request], Awaitable[Response]]:
        async def redeliver(request: Request) -> Response:
            subject = self._subject_or_404(kind, request)
            if subject.callback_url is None:
                return validation(
                    f"the {kind} has no callback_url",
                    error_type="missing_callback_url",
                    field="callback_url",
                )
            if subject.in_flight() is not None:
                return validation(
                    f"a callback delivery is already in flight for this {kind}",
                    error_type="conflict",
                )
            delivery = self.engine.start(subject, is_automatic=False)
            return JSONResponse(delivery.to_json(), 201)

        return redeliver

    # --- callback secrets -------------------------------------------------------------------

    async def _create_secret(self, request: Request) -> Response:
        data = await json_object(request, required=False)
        record = self.state.add_secret(now=self.clock(), label=optional_str(data, "label"))
        return JSONResponse(record.to_json(reveal=True), 201)

    async def _list_secrets(self, _request: Request) -> Response:
        items = [record.to_json() for record in self.state.secrets.values()]
        return JSONResponse({"items": items, "first": None, "next": None, "previous": None})

    async def _secret_endpoint(self, request: Request) -> Response:
        try:
            record = self.state.secrets.get(uuid.UUID(request.path_params["secret_id"]))
        except ValueError:
            record = None
        if record is None:
            return error(404, "not_found", "callback secret not found")
        if request.method == "DELETE":
            del self.state.secrets[record.id]
            return Response(status_code=204)
        if request.method == "PATCH":
            data = await json_object(request)
            now = self.clock()
            if "label" in data:
                record.label = optional_str(data, "label")
                record.updated_at = now
            if "is_current" in data:
                if not isinstance(data["is_current"], bool):
                    return validation(
                        "is_current must be a boolean", error_type="type", field="is_current"
                    )
                if data["is_current"]:
                    self.state.promote(record, now=now)
                else:
                    record.is_current = False
                    record.updated_at = now
        return JSONResponse(record.to_json())
