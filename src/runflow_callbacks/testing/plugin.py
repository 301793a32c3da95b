"""pytest plugin (entry point ``pytest11``, loaded automatically): fixtures for callback tests.

- ``runflow_secret``: a fresh ``whsec_test_...`` secret for the test; configure your receiver
  with it (override the fixture to use your own).
- ``runflow_payloads``: a :class:`~runflow_callbacks.testing.PayloadFactory`, seeded from the
  test's id (reproducible, different from test to test).
- ``runflow_signer``: ``runflow_signer(payload_or_bytes)`` returns a
  :class:`~runflow_callbacks.testing.SignedRequest` signed with ``runflow_secret``.
- ``fake_runflow``: a :class:`~runflow_callbacks.testing.RunningFakeRunflow` under a real
  uvicorn server, signing with ``runflow_secret`` and retrying fast (0.05, 0.1, 0.2, 0.4 s,
  5 attempts). Tune it with ``@pytest.mark.fake_runflow(max_attempts=2, ...)`` (any
  :class:`~runflow_callbacks.testing.FakeRunflow` option). Needs uvicorn.

pytest loads this module in every run of a project that installs runflow-callbacks, used or
not. So it imports only pytest and the standard library at the top, and the kit (pydantic,
httpx, starlette) inside the fixtures that need it: a test session that uses none of them
does not pay for them.
"""

from __future__ import annotations

import secrets
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from pydantic import BaseModel

    from runflow_callbacks.testing.factories import PayloadFactory
    from runflow_callbacks.testing.fake.running import RunningFakeRunflow
    from runflow_callbacks.testing.requests import SignedRequest

__all__ = [
    "FAKE_RUNFLOW_DEFAULTS",
    "Signer",
    "fake_runflow",
    "runflow_payloads",
    "runflow_secret",
    "runflow_signer",
]

#: Options of the ``fake_runflow`` fixture's fake unless a ``fake_runflow`` marker says otherwise.
FAKE_RUNFLOW_DEFAULTS: Final[Mapping[str, Any]] = {
    "retry_delays_s": (0.05, 0.1, 0.2, 0.4),
    "max_attempts": 5,
    "attempt_timeout_s": 5.0,
}


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``fake_runflow`` marker."""
    config.addinivalue_line(
        "markers",
        "fake_runflow(**options): options of the fake_runflow fixture's FakeRunflow "
        "(max_attempts, retry_delays_s, attempt_timeout_s, secret, api_key, ...)",
    )


@dataclass(frozen=True)
class Signer:
    """Signs bodies like Runflow with one secret: ``signer(payload_or_bytes)``."""

    secret: str

    def __repr__(self) -> str:
        return "Signer(secret=<hidden>)"

    def __call__(
        self,
        payload_or_bytes: BaseModel | Mapping[str, Any] | bytes | bytearray,
        *,
        request_id: str | None = None,
    ) -> SignedRequest:
        """The signed request for a payload model, a mapping, or exact bytes."""
        from runflow_callbacks.testing.requests import signed_request  # noqa: PLC0415 - lazy

        return signed_request(payload_or_bytes, self.secret, request_id=request_id)


@pytest.fixture
def runflow_secret() -> str:
    """A fresh callback secret, shaped like the ``plain_secret`` Runflow returns."""
    return f"whsec_test_{secrets.token_urlsafe(24)}"


@pytest.fixture
def runflow_payloads(request: pytest.FixtureRequest) -> PayloadFactory:
    """A payload factory seeded from the test's id."""
    from runflow_callbacks.testing.factories import PayloadFactory  # noqa: PLC0415 - lazy

    return PayloadFactory(seed=zlib.crc32(request.node.nodeid.encode("utf-8")))


@pytest.fixture
def runflow_signer(runflow_secret: str) -> Signer:
    """Signs payloads or bytes with ``runflow_secret``."""
    return Signer(runflow_secret)


@pytest.fixture
def fake_runflow(
    request: pytest.FixtureRequest, runflow_secret: str
) -> Iterator[RunningFakeRunflow]:
    """A fake Runflow under uvicorn that signs with ``runflow_secret`` and retries fast."""
    from runflow_callbacks.testing.fake.running import serve_fake_runflow  # noqa: PLC0415 - lazy

    options: dict[str, Any] = {**FAKE_RUNFLOW_DEFAULTS, "secret": runflow_secret}
    marker = request.node.get_closest_marker("fake_runflow")
    if marker is not None:
        options.update(marker.kwargs)
    with serve_fake_runflow(**options) as running:
        yield running
