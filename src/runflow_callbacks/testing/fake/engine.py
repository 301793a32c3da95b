"""The fake Runflow's delivery engine: sign, POST over real HTTP, retry, record every attempt.

A delivery is signed once, when it is created, with the organization's current callback secret
(unsigned when it has none); every attempt sends the same bytes and signature with a fresh
``Runflow-Request-Id``. A non-2xx answer, a timeout or a connection error fails the attempt;
the next one follows after ``retry_delays_s[n - 1]`` seconds (the last delay doubles for
attempts past the end of the list) until ``max_attempts`` is reached. ``on_attempt``, when
set, is told of every attempt once it ended (``fake-runflow`` prints a line for each).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Final

import httpx

from runflow_callbacks.defaults import (
    FAKE_ATTEMPT_TIMEOUT_S,
    FAKE_MAX_ATTEMPTS,
    FAKE_RETRY_DELAYS_S,
)
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.testing.fake.state import Attempt, Delivery, FakeState, Subject
from runflow_callbacks.testing.requests import REQUEST_ID_HEADER
from runflow_callbacks.verifier import SIGNATURE_HEADER, sign
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    #: Told of each attempt that ended, with its delivery (see :class:`DeliveryEngine`).
    AttemptListener = Callable[[Delivery, Attempt], object]

__all__ = [
    "DEFAULT_ATTEMPT_TIMEOUT_S",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_RETRY_DELAYS_S",
    "DeliveryEngine",
]

#: Our choice of schedule (Runflow documents "exponential" without numbers): 1, 2, 4, 8 s.
#: These three live in :mod:`runflow_callbacks.defaults`, where the command line reads them.
DEFAULT_RETRY_DELAYS_S: Final = FAKE_RETRY_DELAYS_S
DEFAULT_MAX_ATTEMPTS: Final = FAKE_MAX_ATTEMPTS
DEFAULT_ATTEMPT_TIMEOUT_S: Final = FAKE_ATTEMPT_TIMEOUT_S
#: How much of a receiver's answer is kept in ``response_body``.
MAX_RESPONSE_BODY_CHARS: Final = 2048

_logger = logging.getLogger(__name__)


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
    ) -> None:
        delays = tuple(float(delay) for delay in retry_delays_s)
        if not delays or any(delay < 0 for delay in delays):
            raise ConfigurationError("retry_delays_s needs at least one delay, none negative")
        if max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        if attempt_timeout_s <= 0:
            raise ConfigurationError("attempt_timeout_s must be positive")
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
        signature = None if secret is None else sign(body, secret.plain_secret)
        task = asyncio.get_running_loop().create_task(
            self._deliver(delivery, signature), name=f"runflow-delivery:{delivery.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return delivery

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=httpx.Timeout(self.attempt_timeout_s),
                follow_redirects=False,
            )
        return self._client

    async def _deliver(self, delivery: Delivery, signature: str | None) -> None:
        for number in range(1, delivery.max_attempts + 1):
            if await self._attempt(delivery, number, signature):
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

    async def _attempt(self, delivery: Delivery, number: int, signature: str | None) -> bool:
        started = self.clock()
        attempt_id = uuid.uuid4()
        headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: str(attempt_id)}
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        delivery.status_code = "delivering"
        delivery.next_attempt_at = None
        delivery.updated_at = started
        attempt = Attempt(
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
