"""Test kit for code that receives Runflow callbacks.

- :class:`PayloadFactory` and :func:`batch_payload` / :func:`run_payload` /
  :func:`payload_for_event`: realistic payloads for every event and status.
- :func:`signed_request` and the tamper helpers (:func:`flip_byte`, :func:`with_z_timestamps`,
  :func:`compact`, :func:`signed_with`, :func:`without_signature`) for negative tests.
- :class:`FakeRunflow`: an ASGI app that delivers callbacks like Runflow and serves the
  delivery-history, redelivery and callback-secret API (``runflow_callbacks.testing.fake``).
- The pytest plugin (``runflow_callbacks.testing.plugin``), registered automatically.
- :func:`serve_in_thread`: run any ASGI app under a real uvicorn (needs the ``serve`` extra).

Nothing here imports uvicorn until a server is actually started.
"""

from __future__ import annotations

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
