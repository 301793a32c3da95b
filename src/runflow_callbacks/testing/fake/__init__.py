"""A fake Runflow: delivers callbacks over real HTTP and serves the delivery-history API.

See :class:`FakeRunflow` (the ASGI app), :class:`DeliveryEngine` (signing, retries, records) and
the record types of :mod:`runflow_callbacks.testing.fake.state`.
"""

from __future__ import annotations

from runflow_callbacks.testing.fake.app import DEFAULT_API_KEY, FakeRunflow
from runflow_callbacks.testing.fake.engine import (
    DEFAULT_ATTEMPT_TIMEOUT_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_DELAYS_S,
    DeliveryEngine,
)
from runflow_callbacks.testing.fake.running import RunningFakeRunflow, serve_fake_runflow
from runflow_callbacks.testing.fake.state import DELIVERY_STATES, FAILURE_REASONS

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_ATTEMPT_TIMEOUT_S",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_RETRY_DELAYS_S",
    "DELIVERY_STATES",
    "FAILURE_REASONS",
    "DeliveryEngine",
    "FakeRunflow",
    "RunningFakeRunflow",
    "serve_fake_runflow",
]
