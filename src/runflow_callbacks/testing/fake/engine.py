"""The fake Runflow's delivery engine: sign, POST over real HTTP, retry, record every attempt.

A delivery is signed once, when it is created, with the organization's current callback secret
(unsigned when it has none); every attempt sends the same bytes and signature with a fresh
``Runflow-Request-Id``. A non-2xx answer, a timeout or a connection error fails the attempt;
the next one follows after ``retry_delays_s[n - 1]`` seconds (the last delay doubles for
attempts past the end of the list) until ``max_attempts`` is reached. ``on_attempt``, when
set, is told of every attempt once it ended (``fake-runflow`` prints a line for each).

Webhook deliveries (:meth:`DeliveryEngine.start_webhook`) follow the same schedule and states.
Each is signed once with its webhook's own secret, the way this project assumes Runflow does
(undocumented, spec section 9): ``webhook_signature_header`` (default ``Runflow-Signature``)
carries the HMAC-SHA256 hex of the body, keyed by ``webhook_signing_key``: ``raw`` (the whole
secret string as UTF-8, as for callbacks; the default), ``without_prefix`` (the string after
``whsec_``) or ``base64`` (the rest base64-decoded, as Standard Webhooks does).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import httpx

from runflow_callbacks.defaults import (
    FAKE_ATTEMPT_TIMEOUT_S,
    FAKE_MAX_ATTEMPTS,
    FAKE_RETRY_DELAYS_S,
)
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.testing.fake.state import (
    Attempt,
    Delivery,
    FakeState,
    Subject,
    WebhookDeliveryRecord,
    WebhookRecord,
)
from runflow_callbacks.testing.requests import REQUEST_ID_HEADER
from runflow_callbacks.verifier import SIGNATURE_HEADER, sign
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    #: Told of each attempt that ended, with its delivery (see :class:`DeliveryEngine`).
    AttemptListener = Callable[[Delivery, Attempt], object]

__all__ = [
    "DEFAULT_ATTEMPT_TIMEOUT_S",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_RETRY_DELAYS_S",
    "WEBHOOK_SIGNING_KEYS",
    "DeliveryEngine",
    "WebhookSigningKey",
    "webhook_signing_key_bytes",
]

WebhookSigningKey: TypeAlias = Literal["raw", "without_prefix", "base64"]
"""How the fake turns a webhook's secret into the HMAC key (see the module docstring)."""
WEBHOOK_SIGNING_KEYS: Final[tuple[WebhookSigningKey, ...]] = ("raw", "without_prefix", "base64")

#: Our choice of schedule (Runflow documents "exponential" without numbers): 1, 2, 4, 8 s.
#: These three live in :mod:`runflow_callbacks.defaults`, where the command line reads them.
DEFAULT_RETRY_DELAYS_S: Final = FAKE_RETRY_DELAYS_S
DEFAULT_MAX_ATTEMPTS: Final = FAKE_MAX_ATTEMPTS
DEFAULT_ATTEMPT_TIMEOUT_S: Final = FAKE_ATTEMPT_TIMEOUT_S
#: How much of a receiver's answer is kept in ``response_body``.
MAX_RESPONSE_BODY_CHARS: Final = 2048

_logger = logging.getLogger(__name__)


def webhook_signing_key_bytes(secret: str, mode: WebhookSigningKey) -> bytes:
    """The HMAC key of a webhook secret under ``mode``; ConfigurationError when it has none."""
    if mode == "raw":
        return secret.encode("utf-8")
    if not secret.startswith("whsec_"):
        raise ConfigurationError(f"a webhook secret must start with whsec_ for {mode!r} keys")
    rest = secret.removeprefix("whsec_")
    if mode == "without_prefix":
        return rest.encode("utf-8")
    try:
        return base64.b64decode(rest, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(
            "a webhook secret must be whsec_ and base64 for 'base64' keys"
        ) from None


def utc_now() -> datetime:
    """The current UTC time (the engine's default clock)."""
    return datetime.now(timezone.utc)


class DeliveryEngine:
    """Delivers callbacks of one :class:`FakeState` from asyncio tasks of the serving loop.

    ``clock`` stamps the records; ``sleep`` waits between attempts (inject one to control time
    in tests); ``transport`` replaces the HTTP transport (default: real HTTP).

    ``on_attempt`` (or the attribute of that name, set later) is called in the serving loop
    with the :class:`Delivery` and the :class:`Attempt` each time an attempt ends, once
    everything about it is recorded: the attempt's status or error and latency, and the
    delivery's new state (``succeeded``, ``pending`` with its ``next_attempt_at``, or
    ``failed``). It must not block; an exception it raises is logged and the delivery goes on.
    """

    def __init__(
        self,
        state: FakeState,
        *,
        retry_delays_s: Sequence[float] = DEFAULT_RETRY_DELAYS_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
        on_attempt: AttemptListener | None = None,
        webhook_signature_header: str = SIGNATURE_HEADER,
        webhook_signing_key: WebhookSigningKey = "raw",
    ) -> None:
        delays = tuple(float(delay) for delay in retry_delays_s)
        if not delays or any(delay < 0 for delay in delays):
            raise ConfigurationError("retry_delays_s needs at least one delay, none negative")
        if max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        if attempt_timeout_s <= 0:
            raise ConfigurationError("attempt_timeout_s must be positive")
        if webhook_signing_key not in WEBHOOK_SIGNING_KEYS:
            raise ConfigurationError(
                f"webhook_signing_key must be one of {', '.join(WEBHOOK_SIGNING_KEYS)}"
            )
        if not webhook_signature_header or not webhook_signature_header.isascii():
            raise ConfigurationError("webhook_signature_header must be a non-empty header name")
        self.webhook_signature_header = webhook_signature_header
        self.webhook_signing_key: WebhookSigningKey = webhook_signing_key
        self.state = state
        self.retry_delays_s = delays
        self.max_attempts = max_attempts
        self.attempt_timeout_s = attempt_timeout_s
        self.clock = clock
        self.sleep = sleep
        self.on_attempt: AttemptListener | None = on_attempt
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def retry_delay_s(self, attempt_number: int) -> float:
        """Seconds to wait after failed attempt ``attempt_number`` (1-based)."""
        delays = self.retry_delays_s
        if attempt_number <= len(delays):
            return delays[attempt_number - 1]
        return delays[-1] * 2.0 ** (attempt_number - len(delays))

    def start(self, subject: Subject, *, is_automatic: bool) -> Delivery:
        """Create a delivery of ``subject``'s callback and start delivering it (in the loop)."""
        if subject.callback_url is None:
            raise ConfigurationError(f"the {subject.kind} has no callback_url")
        now = self.clock()
        body = dumps_payload(subject.payload)
        secret = self.state.current_secret()
        if secret is not None:
            secret.last_used_at = now
        delivery = Delivery(
            id=uuid.uuid4(),
            subject=subject,
            callback_url=subject.callback_url,
            payload_bytes=body,
            signing_secret_id=None if secret is None else secret.id,
            is_automatic=is_automatic,
            max_attempts=self.max_attempts,
            created_at=now,
            updated_at=now,
            next_attempt_at=now,
        )
        subject.deliveries.append(delivery)
        signed = {} if secret is None else {SIGNATURE_HEADER: sign(body, secret.plain_secret)}
        self._launch(delivery, signed)
        return delivery

    def start_webhook(self, webhook: WebhookRecord, subject: Subject) -> WebhookDeliveryRecord:
        """Create a delivery of ``subject``'s event to ``webhook`` and start delivering it.

        The body is the callback payload (the same shape, spec section 9), signed once with
        the webhook's secret (see the module docstring).
        """
        now = self.clock()
        body = dumps_payload(subject.payload)
        event = subject.payload.get("event")
        key = webhook_signing_key_bytes(webhook.secret, self.webhook_signing_key)
        signature = hmac.new(key, body, hashlib.sha256).hexdigest()
        delivery = WebhookDeliveryRecord(
            id=uuid.uuid4(),
            subject=subject,
            callback_url=webhook.url,
            payload_bytes=body,
            signing_secret_id=None,
            is_automatic=True,
            max_attempts=self.max_attempts,
            created_at=now,
            updated_at=now,
            next_attempt_at=now,
            webhook=webhook,
            event_type_code=event if isinstance(event, str) else "",
        )
        webhook.last_triggered_at = now
        webhook.deliveries.append(delivery)
        self.state.webhook_deliveries.append(delivery)
        self._launch(delivery, {self.webhook_signature_header: signature})
        return delivery

    def _launch(self, delivery: Delivery, signed: Mapping[str, str]) -> None:
        task = asyncio.get_running_loop().create_task(
            self._deliver(delivery, signed), name=f"runflow-delivery:{delivery.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=httpx.Timeout(self.attempt_timeout_s),
                follow_redirects=False,
            )
        return self._client

    async def _deliver(self, delivery: Delivery, signed: Mapping[str, str]) -> None:
        for number in range(1, delivery.max_attempts + 1):
            if await self._attempt(delivery, number, signed):
                self._report_attempt(delivery)
                return
            now = self.clock()
            if number == delivery.max_attempts:
                delivery.status_code = "failed"
                delivery.next_attempt_at = None
                delivery.completed_at = now
                delivery.updated_at = now
                self._report_attempt(delivery)
                return
            delay = self.retry_delay_s(number)
            delivery.status_code = "pending"
            delivery.next_attempt_at = now + timedelta(seconds=delay)
            delivery.attempts[-1].next_retry_at = delivery.next_attempt_at
            delivery.updated_at = now
            self._report_attempt(delivery)
            await self.sleep(delay)

    def _report_attempt(self, delivery: Delivery) -> None:
        """Tell ``on_attempt`` of the attempt that just ended (the delivery's last)."""
        listener = self.on_attempt
        if listener is None:
            return
        try:
            listener(delivery, delivery.attempts[-1])
        except Exception:
            _logger.exception("on_attempt failed on delivery %s; the delivery goes on", delivery.id)

    async def _attempt(self, delivery: Delivery, number: int, signed: Mapping[str, str]) -> bool:
        started = self.clock()
        attempt_id = uuid.uuid4()
        headers = {
            "Content-Type": "application/json",
            REQUEST_ID_HEADER: str(attempt_id),
            **signed,
        }
        delivery.status_code = "delivering"
        delivery.next_attempt_at = None
        delivery.updated_at = started
        attempt = delivery.attempt_type(
            id=attempt_id, delivery_id=delivery.id, attempt_number=number, created_at=started
        )
        delivery.attempts.append(attempt)
        tick = time.perf_counter()
        try:
            response = await self._http().post(
                delivery.callback_url, content=delivery.payload_bytes, headers=headers
            )
        except httpx.TimeoutException as exc:
            attempt.error_message = (
                f"no answer within {self.attempt_timeout_s:g}s ({type(exc).__name__})"
            )
            reason = "timeout"
        except httpx.TransportError as exc:
            attempt.error_message = f"connection failed: {type(exc).__name__}: {exc}"
            reason = "connection_error"
        else:
            attempt.status_code = response.status_code
            attempt.response_body = response.text[:MAX_RESPONSE_BODY_CHARS]
            reason = "" if response.is_success else "http_error"
        attempt.response_time_ms = round((time.perf_counter() - tick) * 1000)
        now = self.clock()
        delivery.updated_at = now
        if not reason:
            delivery.status_code = "succeeded"
            delivery.failure_reason_code = None
            delivery.failure_detail = None
            delivery.completed_at = now
            return True
        delivery.failure_reason_code = reason
        delivery.failure_detail = (
            f"the receiver answered {attempt.status_code}"
            if reason == "http_error"
            else attempt.error_message
        )
        return False

    async def aclose(self) -> None:
        """Cancel the deliveries in progress and close the HTTP client."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
