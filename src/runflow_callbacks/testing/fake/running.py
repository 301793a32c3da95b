"""A :class:`FakeRunflow` under a real uvicorn server, with helpers to drive it from tests.

>>> with serve_fake_runflow(secret="whsec_test") as runflow:  # doctest: +SKIP
...     batch = runflow.create_batch(callback_url="http://127.0.0.1:8000/callbacks/runflow")
...     delivery = runflow.wait_for_delivery(batch_id=batch["id"])
...     assert delivery.status_code == "succeeded"
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Final

import httpx

from runflow_callbacks.client import RunflowClient
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.testing.fake.app import FakeRunflow
from runflow_callbacks.testing.fake.state import IN_FLIGHT_STATES
from runflow_callbacks.testing.server import serve_in_thread

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from uuid import UUID

    from runflow_callbacks.models import CallbackDelivery
    from runflow_callbacks.webhooks import WebhookDelivery

__all__ = ["RunningFakeRunflow", "serve_fake_runflow"]

_UNSET: Final[Any] = object()
_POLL_INTERVAL_S: Final = 0.02


class RunningFakeRunflow:
    """A served fake Runflow: its ``base_url``, ``api_key``, the ``fake`` itself, and helpers.

    Every helper talks to the fake over HTTP, so it is safe from any thread.
    """

    def __init__(self, fake: FakeRunflow, base_url: str, *, api_key: str) -> None:
        self.fake = fake
        self.base_url = base_url
        self.api_key = api_key
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(10.0),
        )
        self._api = self.client(max_attempts=1)

    def __repr__(self) -> str:
        return f"RunningFakeRunflow(base_url={self.base_url!r})"

    def close(self) -> None:
        """Close the helper's HTTP connections (the server is stopped by its context)."""
        self._http.close()
        self._api.close()

    def client(self, **options: Any) -> RunflowClient:
        """A :class:`RunflowClient` for this fake (``options`` go to its constructor)."""
        return RunflowClient(api_key=self.api_key, base_url=self.base_url, **options)

    def _create(self, plural: str, fields: dict[str, Any]) -> dict[str, Any]:
        body = {key: value for key, value in fields.items() if value is not _UNSET}
        response = self._http.post(f"/_fake/{plural}", json=body)
        if response.status_code != 201:
            raise ConfigurationError(f"the fake Runflow refused the {plural}: {response.text}")
        record: dict[str, Any] = response.json()
        return record

    def create_batch(
        self,
        *,
        callback_url: str | None,
        event: str | None = None,
        status: str | None = None,
        output: Any = _UNSET,
        metadata: Any = _UNSET,
        batch_id: str | UUID | None = None,
    ) -> dict[str, Any]:
        """Create a finished batch (starting its delivery); returns its record with ``id``."""
        return self._create(
            "batches",
            {
                "callback_url": callback_url,
                "event": event,
                "status": status,
                "output": output,
                "metadata": metadata,
                "id": None if batch_id is None else str(batch_id),
            },
        )

    def create_run(
        self,
        *,
        callback_url: str | None,
        event: str | None = None,
        status: str | None = None,
        output: Any = _UNSET,
        metadata: Any = _UNSET,
        run_id: str | UUID | None = None,
    ) -> dict[str, Any]:
        """Create a finished run (starting its delivery); returns its record with ``id``."""
        return self._create(
            "runs",
            {
                "callback_url": callback_url,
                "event": event,
                "status": status,
                "output": output,
                "metadata": metadata,
                "id": None if run_id is None else str(run_id),
            },
        )

    def deliveries(
        self, *, batch_id: str | UUID | None = None, run_id: str | UUID | None = None
    ) -> list[CallbackDelivery]:
        """The delivery history of one batch or run, oldest first."""
        if batch_id is not None and run_id is None:
            return list(self._api.batch_deliveries(batch_id))
        if run_id is not None and batch_id is None:
            return list(self._api.run_deliveries(run_id))
        raise ConfigurationError("pass exactly one of batch_id= or run_id=")

    def wait_for_delivery(
        self,
        *,
        batch_id: str | UUID | None = None,
        run_id: str | UUID | None = None,
        count: int = 1,
        timeout_s: float = 15.0,
    ) -> CallbackDelivery:
        """Wait until at least ``count`` deliveries exist and none is in flight; return the last.

        Raises :class:`TimeoutError` (saying where the deliveries stood) after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            history = self.deliveries(batch_id=batch_id, run_id=run_id)
            if len(history) >= count and all(
                delivery.status_code not in IN_FLIGHT_STATES for delivery in history
            ):
                return history[-1]
            if time.monotonic() > deadline:
                states = [f"{d.status_code} after {d.attempt_count} attempts" for d in history] or [
                    "no delivery"
                ]
                raise TimeoutError(
                    f"deliveries not finished after {timeout_s}s: {', '.join(states)}"
                )
            time.sleep(_POLL_INTERVAL_S)

    def create_webhook(
        self,
        url: str,
        *,
        secret: str | None = None,
        event_types: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Create a webhook (through ``POST /v1/webhooks``); returns its record, ``secret``
        included. Without ``secret`` the fake makes one; without ``event_types`` the webhook
        takes every event type."""
        body: dict[str, Any] = {"url": url}
        if secret is not None:
            body["secret"] = secret
        if event_types is not None:
            body["event_subscriptions"] = list(event_types)
        response = self._http.post("/v1/webhooks", json=body)
        if response.status_code != 201:
            raise ConfigurationError(f"the fake Runflow refused the webhook: {response.text}")
        record: dict[str, Any] = response.json()
        return record

    def webhook_deliveries(self, webhook_id: str | UUID = "any") -> list[WebhookDelivery]:
        """The deliveries of one webhook (``any``: of all of them), oldest first."""
        return self._api.list_webhook_deliveries(webhook_id)

    def wait_for_webhook_deliveries(
        self, *, webhook_id: str | UUID = "any", count: int = 1, timeout_s: float = 15.0
    ) -> list[WebhookDelivery]:
        """Wait until at least ``count`` webhook deliveries exist and each has finished (an
        attempt succeeded, or the last failed with no retry due); return them all.

        Raises :class:`TimeoutError` (saying where the deliveries stood) after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            deliveries = self.webhook_deliveries(webhook_id)
            if len(deliveries) >= count and all(map(_webhook_finished, deliveries)):
                return deliveries
            if time.monotonic() > deadline:
                states = [
                    f"{len(d.attempts or [])} attempts, finished: {_webhook_finished(d)}"
                    for d in deliveries
                ] or ["no delivery"]
                raise TimeoutError(
                    f"webhook deliveries not finished after {timeout_s}s: {', '.join(states)}"
                )
            time.sleep(_POLL_INTERVAL_S)

    def fail_next_api_calls(self, count: int, *, status: int = 503) -> None:
        """Answer the next ``count`` API calls with ``status`` (default 503)."""
        self.fake.fail_next_api_calls(count, status=status)


def _webhook_finished(delivery: WebhookDelivery) -> bool:
    attempts = delivery.attempts or []
    if not attempts:
        return False
    last = attempts[-1]
    return last.succeeded is True or (last.succeeded is False and last.next_retry_at is None)


@contextlib.contextmanager
def serve_fake_runflow(
    fake: FakeRunflow | None = None, *, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> Iterator[RunningFakeRunflow]:
    """Serve a :class:`FakeRunflow` (``fake``, or one built from ``options``) under uvicorn.

    Needs the ``serve`` extra (uvicorn). The server stops when the block ends.
    """
    if fake is None:
        fake = FakeRunflow(**options)
    elif options:
        raise ConfigurationError("pass either a FakeRunflow or options to build one, not both")
    with serve_in_thread(fake, host=host, port=port) as base_url:
        running = RunningFakeRunflow(fake, base_url, api_key=fake.api_key)
        try:
            yield running
        finally:
            running.close()
