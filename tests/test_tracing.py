"""OpenTelemetry spans around verify, record, handler and answer (the SDK's in-memory exporter)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from runflow_callbacks import CallbackReceiver, dumps_payload, sign
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import PayloadFactory
from runflow_callbacks.tracing import CallbackTracing

if TYPE_CHECKING:
    from collections.abc import Iterator

    from runflow_callbacks.context import CallbackContext

SECRET = "whsec_tracing_0123456789abcd"


@pytest.fixture
def spans() -> Iterator[tuple[CallbackTracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield CallbackTracing(provider.get_tracer("test")), exporter
    provider.shutdown()


async def _post(receiver: CallbackReceiver, body: bytes, signature: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=receiver)
    async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
        return await client.post(
            "/callbacks/runflow",
            content=body,
            headers={"Runflow-Signature": signature, "Runflow-Request-Id": "req-42"},
        )


async def test_a_callback_is_one_span_with_verify_record_handler_and_answer_inside(
    spans: tuple[CallbackTracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    receiver = CallbackReceiver(secrets=SECRET, store=open_store("memory://"), tracing=tracing)
    ran: list[CallbackContext] = []
    receiver.on_any(ran.append)
    body = dumps_payload(PayloadFactory(seed=1).batch(event="batch.succeeded"))
    assert (await _post(receiver, body, sign(body, SECRET))).json() == {"status": "processed"}
    finished = {span.name: span for span in exporter.get_finished_spans()}
    assert set(finished) == {
        "runflow_callbacks.callback",
        "runflow_callbacks.verify",
        "runflow_callbacks.record",
        "runflow_callbacks.handler",
        "runflow_callbacks.complete",
        "runflow_callbacks.answer",
    }
    root = finished["runflow_callbacks.callback"]
    for name, span in finished.items():
        if name != "runflow_callbacks.callback":
            assert span.parent is not None
            assert span.parent.span_id == root.context.span_id, name
    attributes = dict(root.attributes or {})
    assert attributes["runflow.request_id"] == "req-42"
    assert attributes["runflow.event"] == "batch.succeeded"
    assert attributes["runflow.outcome"] == "processed"
    assert attributes["runflow.key"] == ran[0].key
    assert all(SECRET not in str(span.attributes) for span in finished.values())


async def test_a_rejected_request_is_an_error_span_with_its_code(
    spans: tuple[CallbackTracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    receiver = CallbackReceiver(secrets=SECRET, tracing=tracing)
    body = b'{"event": "run.completed"}'
    assert (await _post(receiver, body, "0" * 64)).status_code == 401
    [root] = [s for s in exporter.get_finished_spans() if s.name == "runflow_callbacks.callback"]
    assert (root.attributes or {})["runflow.outcome"] == "signature_mismatch"
    assert root.status.status_code is StatusCode.ERROR


async def test_a_failing_handler_marks_the_callback_span_as_an_error(
    spans: tuple[CallbackTracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = spans
    receiver = CallbackReceiver(secrets=SECRET, tracing=tracing)

    @receiver.on_any
    def fail(context: CallbackContext) -> None:
        raise RuntimeError("down")

    body = dumps_payload(PayloadFactory(seed=2).run())
    assert (await _post(receiver, body, sign(body, SECRET))).status_code == 500
    [root] = [s for s in exporter.get_finished_spans() if s.name == "runflow_callbacks.callback"]
    assert (root.attributes or {})["runflow.outcome"] == "failed"
    assert root.status.status_code is StatusCode.ERROR
