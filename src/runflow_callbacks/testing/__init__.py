"""Test kit for code that receives Runflow callbacks.

- :class:`PayloadFactory` and :func:`batch_payload` / :func:`run_payload` /
  :func:`payload_for_event`: realistic payloads for every event and status.
- :func:`signed_request` and the tamper helpers (:func:`flip_byte`, :func:`with_z_timestamps`,
  :func:`compact`, :func:`signed_with`, :func:`without_signature`) for negative tests.
- :class:`FakeRunflow`: an ASGI app that delivers callbacks like Runflow and serves the
  delivery-history, redelivery and callback-secret API (``runflow_callbacks.testing.fake``).
- The pytest plugin (``runflow_callbacks.testing.plugin``), registered automatically.
- :func:`serve_in_thread`: run any ASGI app under a real uvicorn (needs the ``serve`` extra).

Every name here is imported on first use (PEP 562), like the package root's: the pytest plugin
lives in this package and is loaded by every pytest run of a project that installs us, so
importing the package must not pull in the factories (pydantic) or the fake (starlette,
httpx). Nothing here imports uvicorn until a server is actually started.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from runflow_callbacks.testing.factories import (
        BATCH_EVENT_STATUS,
        EVENTS,
        RUN_EVENT_STATUS,
        PayloadFactory,
        batch_payload,
        payload_for_event,
        run_payload,
    )
    from runflow_callbacks.testing.fake import FakeRunflow, RunningFakeRunflow, serve_fake_runflow
    from runflow_callbacks.testing.requests import (
        REQUEST_ID_HEADER,
        SignedRequest,
        compact,
        flip_byte,
        signed_request,
        signed_with,
        with_z_timestamps,
        without_signature,
    )
    from runflow_callbacks.testing.server import (
        free_port,
        serve_in_thread,
        serve_process,
        wait_for_port,
    )

__all__ = [
    "BATCH_EVENT_STATUS",
    "EVENTS",
    "REQUEST_ID_HEADER",
    "RUN_EVENT_STATUS",
    "FakeRunflow",
    "PayloadFactory",
    "RunningFakeRunflow",
    "SignedRequest",
    "batch_payload",
    "compact",
    "flip_byte",
    "free_port",
    "payload_for_event",
    "run_payload",
    "serve_fake_runflow",
    "serve_in_thread",
    "serve_process",
    "signed_request",
    "signed_with",
    "wait_for_port",
    "with_z_timestamps",
    "without_signature",
]

#: Where each public name is defined (keep the ``TYPE_CHECKING`` imports above in step).
_EXPORTS: Final[dict[str, str]] = {
    "BATCH_EVENT_STATUS": "runflow_callbacks.testing.factories",
    "EVENTS": "runflow_callbacks.testing.factories",
    "RUN_EVENT_STATUS": "runflow_callbacks.testing.factories",
    "PayloadFactory": "runflow_callbacks.testing.factories",
    "batch_payload": "runflow_callbacks.testing.factories",
    "payload_for_event": "runflow_callbacks.testing.factories",
    "run_payload": "runflow_callbacks.testing.factories",
    "FakeRunflow": "runflow_callbacks.testing.fake",
    "RunningFakeRunflow": "runflow_callbacks.testing.fake",
    "serve_fake_runflow": "runflow_callbacks.testing.fake",
    "REQUEST_ID_HEADER": "runflow_callbacks.testing.requests",
    "SignedRequest": "runflow_callbacks.testing.requests",
    "compact": "runflow_callbacks.testing.requests",
    "flip_byte": "runflow_callbacks.testing.requests",
    "signed_request": "runflow_callbacks.testing.requests",
    "signed_with": "runflow_callbacks.testing.requests",
    "with_z_timestamps": "runflow_callbacks.testing.requests",
    "without_signature": "runflow_callbacks.testing.requests",
    "free_port": "runflow_callbacks.testing.server",
    "serve_in_thread": "runflow_callbacks.testing.server",
    "serve_process": "runflow_callbacks.testing.server",
    "wait_for_port": "runflow_callbacks.testing.server",
}

if not TYPE_CHECKING:
    # Hidden from type checkers, which see the explicit imports above (see the package root).

    def __getattr__(name: str) -> object:
        """Import ``name`` from its module on first access, then keep it as a global."""
        if name not in _EXPORTS:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value: object = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups find the global and skip __getattr__
        return value


def __dir__() -> list[str]:
    """The public names and the module's own globals, whether imported yet or not."""
    return sorted({*globals(), *__all__})
